/*
 * socksgate's zero-copy relay: moves bytes between two connected TCP sockets
 * with splice(2) (socket -> pipe -> socket), so payload never enters
 * JavaScript or user-space buffers.
 *
 * One relay thread per process owns an epoll instance (edge-triggered) and
 * every spliced pair. The JavaScript side keeps owning the file descriptors:
 * it stops libuv from reading them, hands them over with start(), and closes
 * them only after this module reported the pair's end (or after cancel() was
 * answered), so a descriptor number is never reused under the relay thread.
 *
 * Per pair and direction: bytes moved, FIN passed on (shutdown(SHUT_WR)) once
 * the pipe is drained, the first error with the side it came from, and an idle
 * deadline. Pipes are taken from a small pool only while a direction has bytes
 * in flight, so an idle session holds no pipe (each pipe costs two fds).
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { END_CLOSED = 0, END_ERROR = 1, END_IDLE = 2, END_CANCELLED = 3 };
enum { CMD_CANCEL = 1, CMD_FAIL = 2 };

/* Ask for more than a pipe holds: the kernel moves what fits. */
#define SPLICE_REQUEST (1 << 20)
#define POOL_MAX 64
#define MAX_EVENTS 256

typedef struct pair pair_t;

typedef struct {
  pair_t *pair;
  int side;     /* 0: client socket, 1: destination socket */
  int writable; /* EPOLLOUT is watched: only after a write would have blocked */
} watch_t;

/* One direction: from fd[side] to fd[1 - side]. */
typedef struct {
  int pipe_r, pipe_w; /* -1 while the direction holds no pipe */
  size_t in_pipe;
  uint64_t bytes;
  int eof;  /* the source sent FIN */
  int shut; /* the FIN was passed on */
} flow_t;

struct pair {
  double id;
  int fd[2];
  flow_t flow[2];
  watch_t watch[2];
  int64_t idle_ms;
  int64_t last_active;
  int first_eof; /* side whose FIN came first, -1 before */
  int done;
  int add_errno; /* epoll_ctl ADD failed in start(): the relay thread ends the pair with it */
  int reason, error_side, error_errno;
  int refs; /* the JS handle, the relay thread, and each queued command */
  pair_t *prev, *next;
};

typedef struct command {
  int kind;
  pair_t *pair;
  struct command *next;
} command_t;

static pthread_once_t thread_once = PTHREAD_ONCE_INIT;
static int thread_error;
static int epoll_fd = -1;
static int wake_fd = -1;
static char wake_token;
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static command_t *queue_head, *queue_tail;
static napi_threadsafe_function on_done;
static int64_t active_pairs; /* main thread only: refs the tsfn while > 0 */

/* The live-pair list and the epoll registrations of pair sockets change under
 * this lock: start() registers from the main thread (no thread hop on the
 * handshake path), the relay thread unregisters when a pair ends. */
static pthread_mutex_t pairs_lock = PTHREAD_MUTEX_INITIALIZER;
static pair_t *pairs; /* every live pair, for the idle scan */
/* Ended pairs whose relay-thread reference is dropped after the current batch
 * of events: a later event in the same batch may still point at them. */
static pair_t *ended;
static int idle_pairs; /* live pairs with an idle deadline */
static int64_t next_idle_scan;
static int64_t idle_scan_every = 1000;
static int64_t scan_every_told = 0; /* the relay thread's idea of it, to know when to wake it */

/* Relay-thread state. */
static int pool[POOL_MAX][2];
static int pool_size;
static uint64_t pipes_created; /* read by stats(); a torn read only blurs a counter */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void unref_pair(pair_t *p) {
  if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0) free(p);
}

/* ---- pipes ---- */

static int acquire_pipe(flow_t *f) {
  if (pool_size > 0) {
    pool_size--;
    f->pipe_r = pool[pool_size][0];
    f->pipe_w = pool[pool_size][1];
    return 0;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -1;
  pipes_created++;
  f->pipe_r = fds[0];
  f->pipe_w = fds[1];
  return 0;
}

/* An empty pipe goes back to the pool; one still holding bytes is closed. */
static void release_pipe(flow_t *f) {
  if (f->pipe_r < 0) return;
  if (f->in_pipe == 0 && pool_size < POOL_MAX) {
    pool[pool_size][0] = f->pipe_r;
    pool[pool_size][1] = f->pipe_w;
    pool_size++;
  } else {
    close(f->pipe_r);
    close(f->pipe_w);
  }
  f->pipe_r = f->pipe_w = -1;
  f->in_pipe = 0;
}

/* ---- pairs ---- */

static void unlink_pair(pair_t *p) {
  if (p->prev) p->prev->next = p->next;
  else pairs = p->next;
  if (p->next) p->next->prev = p->prev;
  if (p->idle_ms > 0) idle_pairs--;
}

/* Ends a pair (relay thread, pairs_lock held) and reports it to JavaScript. */
static void finish_locked(pair_t *p, int reason, int side, int err) {
  if (p->done) return;
  p->done = 1;
  p->reason = reason;
  p->error_side = side;
  p->error_errno = err;
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, p->fd[0], NULL);
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, p->fd[1], NULL);
  unlink_pair(p);
  release_pipe(&p->flow[0]);
  release_pipe(&p->flow[1]);
  p->next = ended;
  ended = p;
  /* The JS handle's reference travels with the call and is dropped there. */
  if (napi_call_threadsafe_function(on_done, p, napi_tsfn_nonblocking) != napi_ok) unref_pair(p);
}

static void finish(pair_t *p, int reason, int side, int err) {
  pthread_mutex_lock(&pairs_lock);
  finish_locked(p, reason, side, err);
  pthread_mutex_unlock(&pairs_lock);
}

/* A write would block: from now on, also wake up when this socket drains. */
static int watch_writable(pair_t *p, int side) {
  watch_t *w = &p->watch[side];
  if (w->writable) return 0;
  w->writable = 1;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = w};
  pthread_mutex_lock(&pairs_lock); /* start() may still be registering this socket */
  int rc = epoll_ctl(epoll_fd, EPOLL_CTL_MOD, p->fd[side], &ev);
  pthread_mutex_unlock(&pairs_lock);
  return rc;
}

static void bury_ended(void) {
  while (ended) {
    pair_t *p = ended;
    ended = p->next;
    unref_pair(p); /* the relay thread's */
  }
}

/* Moves what can move now in one direction; returns 0, or -1 when the pair ended. */
static int pump(pair_t *p, int side) {
  flow_t *f = &p->flow[side];
  int from = p->fd[side], to = p->fd[1 - side];
  int moved = 0;
  int drained = 0; /* the source socket had nothing more: don't ask again until its next event */
  for (;;) {
    int progress = 0;
    if (f->in_pipe > 0) {
      ssize_t n = splice(f->pipe_r, NULL, to, NULL, f->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        f->in_pipe -= (size_t)n;
        f->bytes += (uint64_t)n;
        progress = 1;
      } else if (n < 0 && errno == EAGAIN) {
        if (watch_writable(p, 1 - side) < 0) {
          finish(p, END_ERROR, 1 - side, errno);
          return -1;
        }
      } else if (n < 0 && errno != EINTR) {
        finish(p, END_ERROR, 1 - side, errno);
        return -1;
      }
    }
    if (!f->eof && !drained) {
      if (f->pipe_r < 0 && acquire_pipe(f) < 0) {
        finish(p, END_ERROR, -1, errno);
        return -1;
      }
      /* A full pipe also answers EAGAIN; draining it above makes room next turn.
       * From an empty pipe, EAGAIN can only mean an empty socket. */
      int pipe_was_empty = f->in_pipe == 0;
      ssize_t n = splice(from, NULL, f->pipe_w, NULL, SPLICE_REQUEST, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        f->in_pipe += (size_t)n;
        progress = 1;
      } else if (n == 0) {
        f->eof = 1;
        if (p->first_eof < 0) p->first_eof = side;
        progress = 1;
      } else if (errno == EAGAIN) {
        drained = pipe_was_empty;
      } else if (errno != EINTR) {
        finish(p, END_ERROR, side, errno);
        return -1;
      }
    }
    if (!progress) break;
    moved = 1;
  }
  if (moved) p->last_active = now_ms();
  if (f->in_pipe == 0) {
    release_pipe(f);
    if (f->eof && !f->shut) {
      shutdown(to, SHUT_WR);
      f->shut = 1;
      if (p->flow[1 - side].shut) {
        finish(p, END_CLOSED, -1, 0);
        return -1;
      }
    }
  }
  return 0;
}

static void on_socket_event(pair_t *p, int side, uint32_t events) {
  if (p->done) return;
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(p->fd[side], SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
      finish(p, END_ERROR, side, err);
      return;
    }
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    if (pump(p, side) < 0) return;
  }
  /* Writable: only the direction into this socket cares, and only when it is blocked. */
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
    if (p->flow[1 - side].in_pipe > 0) pump(p, 1 - side);
  }
}

static void scan_idle(int64_t now) {
  pthread_mutex_lock(&pairs_lock);
  pair_t *p = pairs;
  while (p) {
    pair_t *next = p->next;
    if (p->idle_ms > 0 && now - p->last_active >= p->idle_ms) finish_locked(p, END_IDLE, -1, 0);
    p = next;
  }
  pthread_mutex_unlock(&pairs_lock);
}

static void run_commands(void) {
  uint64_t count;
  while (read(wake_fd, &count, sizeof count) > 0) {
  }
  pthread_mutex_lock(&queue_lock);
  command_t *c = queue_head;
  queue_head = queue_tail = NULL;
  pthread_mutex_unlock(&queue_lock);
  while (c) {
    command_t *next = c->next;
    pair_t *p = c->pair;
    if (!p->done) finish(p, c->kind == CMD_FAIL ? END_ERROR : END_CANCELLED, -1, p->add_errno);
    unref_pair(c->pair);
    free(c);
    c = next;
  }
}

static void *relay_thread(void *unused) {
  (void)unused;
  struct epoll_event events[MAX_EVENTS];
  for (;;) {
    pthread_mutex_lock(&pairs_lock);
    int timeout = idle_pairs > 0 ? (int)idle_scan_every : -1;
    scan_every_told = idle_pairs > 0 ? idle_scan_every : 0;
    pthread_mutex_unlock(&pairs_lock);
    int n = epoll_wait(epoll_fd, events, MAX_EVENTS, timeout);
    for (int i = 0; i < n; i++) {
      if (events[i].data.ptr == &wake_token) {
        run_commands();
        continue;
      }
      watch_t *w = events[i].data.ptr;
      on_socket_event(w->pair, w->side, events[i].events);
    }
    if (timeout >= 0) {
      int64_t now = now_ms();
      if (now >= next_idle_scan) {
        scan_idle(now);
        next_idle_scan = now + timeout;
      }
    }
    bury_ended();
  }
  return NULL;
}

static void start_thread(void) {
  epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd < 0 || wake_fd < 0) {
    thread_error = errno;
    return;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wake_token};
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &ev) < 0) {
    thread_error = errno;
    return;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t thread;
  thread_error = pthread_create(&thread, &attr, relay_thread, NULL);
  pthread_attr_destroy(&attr);
}

static void send_command(int kind, pair_t *p);

static void wake_relay_thread(void) {
  uint64_t one = 1;
  ssize_t ignored = write(wake_fd, &one, sizeof one);
  (void)ignored;
}

/*
 * Registers a pair with the relay thread's epoll (main thread). Only input is
 * watched at first, so a session with nothing to move costs the relay thread
 * nothing; bytes already waiting are reported at once by the registration.
 */
static void register_pair(pair_t *p) {
  int wake = 0;
  pthread_mutex_lock(&pairs_lock);
  p->next = pairs;
  p->prev = NULL;
  if (pairs) pairs->prev = p;
  pairs = p;
  if (p->idle_ms > 0) {
    idle_pairs++;
    /* Scan often enough that a short timeout is not overshot by much. */
    int64_t every = p->idle_ms / 4;
    if (every < 10) every = 10;
    if (every < idle_scan_every) idle_scan_every = every;
    wake = scan_every_told == 0 || idle_scan_every < scan_every_told; /* its epoll_wait timeout is stale */
  }
  for (int side = 0; side < 2 && p->add_errno == 0; side++) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = &p->watch[side]};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, p->fd[side], &ev) < 0) p->add_errno = errno;
  }
  pthread_mutex_unlock(&pairs_lock);
  if (wake) wake_relay_thread();
  /* Rare (no memory, the watch limit). The relay thread may already hold events
   * for the first socket, so it, not this thread, ends the pair, reporting the error. */
  if (p->add_errno != 0) send_command(CMD_FAIL, p);
}

static void send_command(int kind, pair_t *p) {
  command_t *c = malloc(sizeof *c);
  if (!c) abort(); /* a failed malloc of 24 bytes leaves nothing sane to do */
  __atomic_add_fetch(&p->refs, 1, __ATOMIC_ACQ_REL);
  c->kind = kind;
  c->pair = p;
  c->next = NULL;
  pthread_mutex_lock(&queue_lock);
  if (queue_tail) queue_tail->next = c;
  else queue_head = c;
  queue_tail = c;
  pthread_mutex_unlock(&queue_lock);
  wake_relay_thread();
}

/* ---- JavaScript side (main thread) ---- */

#define CHECK(call)                                  \
  do {                                               \
    if ((call) != napi_ok) {                         \
      napi_throw_error(env, NULL, "napi: " #call);   \
      return NULL;                                   \
    }                                                \
  } while (0)

/* Runs on the main thread: dispatcher(id, up, down, reason, firstEofSide, errorSide, errno). */
static void call_js(napi_env env, napi_value dispatcher, void *context, void *data) {
  (void)context;
  pair_t *p = data;
  if (env != NULL && dispatcher != NULL) {
    napi_value argv[7], undefined;
    napi_create_double(env, p->id, &argv[0]);
    napi_create_double(env, (double)p->flow[0].bytes, &argv[1]);
    napi_create_double(env, (double)p->flow[1].bytes, &argv[2]);
    napi_create_int32(env, p->reason, &argv[3]);
    napi_create_int32(env, p->first_eof, &argv[4]);
    napi_create_int32(env, p->error_side, &argv[5]);
    napi_create_int32(env, p->error_errno, &argv[6]);
    napi_get_undefined(env, &undefined);
    if (--active_pairs == 0) napi_unref_threadsafe_function(env, on_done);
    napi_call_function(env, undefined, dispatcher, 7, argv, NULL);
  }
  unref_pair(p);
}

/* init(dispatcher): once per process, before start(). */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (on_done != NULL) {
    napi_throw_error(env, NULL, "already initialised");
    return NULL;
  }
  pthread_once(&thread_once, start_thread);
  if (thread_error != 0) {
    napi_throw_error(env, NULL, strerror(thread_error));
    return NULL;
  }
  CHECK(napi_create_string_utf8(env, "socksgate-splice", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &on_done));
  CHECK(napi_unref_threadsafe_function(env, on_done));
  return NULL;
}

/* start(id, clientFd, destinationFd, idleMs) -> handle for cancel(). */
static napi_value js_start(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], handle;
  double id;
  int32_t fd0, fd1;
  int64_t idle;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (on_done == NULL) {
    napi_throw_error(env, NULL, "init() first");
    return NULL;
  }
  CHECK(napi_get_value_double(env, argv[0], &id));
  CHECK(napi_get_value_int32(env, argv[1], &fd0));
  CHECK(napi_get_value_int32(env, argv[2], &fd1));
  CHECK(napi_get_value_int64(env, argv[3], &idle));
  pair_t *p = calloc(1, sizeof *p);
  if (!p) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  p->id = id;
  p->fd[0] = fd0;
  p->fd[1] = fd1;
  p->idle_ms = idle > 0 ? idle : 0;
  p->first_eof = -1;
  p->error_side = -1;
  p->refs = 2; /* the JS handle and the relay thread */
  for (int side = 0; side < 2; side++) {
    p->flow[side].pipe_r = p->flow[side].pipe_w = -1;
    p->watch[side].pair = p;
    p->watch[side].side = side;
  }
  p->last_active = now_ms();
  register_pair(p);
  /* From here the relay thread may already be moving bytes, or even have ended the pair. */
  CHECK(napi_create_external(env, p, NULL, NULL, &handle));
  if (active_pairs++ == 0) napi_ref_threadsafe_function(env, on_done);
  return handle;
}

/* cancel(handle): ends the pair; its end is reported as usual. Only before that report. */
static napi_value js_cancel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *p;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], &p));
  send_command(CMD_CANCEL, p);
  return NULL;
}

/* stats() -> { pipesCreated, activePairs } for tests and diagnostics. */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, created, active;
  CHECK(napi_create_object(env, &result));
  CHECK(napi_create_double(env, (double)pipes_created, &created));
  CHECK(napi_create_double(env, (double)active_pairs, &active));
  CHECK(napi_set_named_property(env, result, "pipesCreated", created));
  CHECK(napi_set_named_property(env, result, "activePairs", active));
  return result;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},
      {"start", NULL, js_start, NULL, NULL, NULL, napi_default, NULL},
      {"cancel", NULL, js_cancel, NULL, NULL, NULL, napi_default, NULL},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

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
 * in flight, so an idle session holds no pipe (each pipe costs two fds). When
 * no pipe can be had (the process or the system is out of descriptors), a
 * direction goes on without one (copy_without_pipe) until one can.
 *
 * Native handshakes (the second half of this file): the relay thread can also
 * own a listening socket, accept, and run the common SOCKS5 exchange itself
 * (greeting, username/password, CONNECT to an address or a name, reply), then
 * splice the pair without JavaScript ever holding a socket. JavaScript is
 * asked only what it alone knows (is this password right, does a rule allow
 * this request, what does this name resolve to) and gets every connection
 * that leaves the common path (SOCKS4, BIND, UDP, anything malformed, a
 * failed connect, a timeout)
 * handed over with the bytes read so far, so refusals and their records are
 * made in one place, the JavaScript session.
 */
#define _GNU_SOURCE
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { END_CLOSED = 0, END_ERROR = 1, END_IDLE = 2, END_CANCELLED = 3 };
enum { CMD_CANCEL = 1, CMD_FAIL = 2, CMD_GO = 3, CMD_HAND_OVER = 4, CMD_FORGET_LISTENER = 5, CMD_DIAL = 6 };

/* Ask for more than a pipe holds: the kernel moves what fits. */
#define SPLICE_REQUEST (1 << 20)
#define POOL_MAX 64
/*
 * Request/response traffic moves through a buffer on the stack instead of a
 * pipe: recv and send, where splicing costs a splice in, a splice out and a
 * third that only says EAGAIN. A read shorter than the buffer proves the
 * socket empty (later bytes raise a new edge), and copying a few bytes costs
 * less than splicing pages. A read that fills the buffer marks the flow bulk,
 * and it splices until the socket runs dry after less than the buffer. Not above a
 * page: a pipe always has room for that much (see copy_small).
 */
#define SMALL_READ 4096
#define MAX_EVENTS 256

typedef struct handshake handshake_t;
typedef struct username username_t;

/* One direction: from fd[side] to fd[1 - side]. */
typedef struct {
  int pipe_r, pipe_w; /* -1 while the direction holds no pipe */
  size_t in_pipe;
  uint64_t bytes;
  int eof;  /* the source sent FIN */
  int shut; /* the FIN was passed on */
  int bulk; /* the last read filled SMALL_READ: splice, don't copy */
  int held_in_source; /* no pipe, and the destination was full: the bytes wait in the source's receive queue */
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
  int refs; /* the JS handle, the relay thread, and each queued command or message */
  pair_t *prev, *next;
  /* Native sessions only (accepted here): this module owns and closes both fds. */
  int native;
  int phase;         /* PHASE_RELAY (0) once spliced; pairs from start() are born relaying */
  int method;        /* the SOCKS5 method chosen */
  int counted;       /* counts in idle_pairs: it has a deadline the scan must see */
  int64_t scan_every; /* while counted: how often the scan must run for this pair's deadline */
  int64_t deadline;  /* handshake or connect deadline while negotiating */
  handshake_t *hs;   /* negotiation state, freed once relaying */
  unsigned char request[22]; /* the CONNECT request, for the record */
  int request_len;
  username_t *user;  /* the RFC 1929 username, for the record and rules; NULL: none */
  int rule;            /* the index of the rule that allowed the request, -1: none decided */
  pair_t *expired;   /* scan_idle's list of pairs past their deadline */
  struct session_gate *gate; /* an admitted native session's server count (a reference), or NULL */
  int ended_untold;  /* counted in gate->ended: ended here, MSG_END not yet delivered */
  int slot_held;     /* it holds a slot of its client's (limits.sessionsPerClient): given back here if it ends here */
  unsigned char slot_key[16]; /* whose (client_key) */
};

typedef struct command {
  int kind;
  int arg; /* CMD_GO: the verdict to remember (see native_answer), -1: none; CMD_DIAL: the rule that allowed it, -1: none */
  struct race *race; /* CMD_DIAL: the addresses JavaScript resolved the name to, to race (the relay thread's from then on) */
  pair_t *pair;
  void *listener; /* CMD_FORGET_LISTENER */
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
/* How often the scan runs: often enough for the shortest deadline of the live
 * pairs (a quarter of its timeout), at most this often when none is short. */
#define SCAN_EVERY_MAX 1000
#define SCAN_EVERY_MIN 10
static int64_t idle_scan_every = SCAN_EVERY_MAX;
static int64_t scan_every_told = 0; /* the relay thread's idea of it, to know when to wake it */

/* Relay-thread state. */
static int pool[POOL_MAX][2];
static int pool_size;
static uint64_t pipes_created; /* read by stats(); a torn read only blurs a counter */
static int pipes_open; /* pipes in flows and in the pool: changed by the relay thread, read by borrowedPipes() */
static int pipe_allowance = -1; /* set by JavaScript (pipeAllowance()), read by the relay thread */
static int may_borrow_pipe(void);
static uint64_t native_accepted, native_handed_over; /* the same */
static uint64_t bytes_copied; /* read by stats(): bytes relayed through copy_small's buffer */
/* Busy polling (relay.busyPollMicroseconds): after a wait that brought events,
 * the relay thread polls for this long before it sleeps again. Waking a core
 * that went idle costs tens of microseconds, more in a virtual machine; a
 * request/response exchange pays it at every message. 0: off. Set by
 * JavaScript, read by the relay thread. */
static int busy_poll_us;
static uint64_t busy_poll_hits; /* read by stats(): polls that found events, so sleeps avoided */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Native handshakes (defined below). */
static void native_event(pair_t *p, int side, uint32_t events);
static void native_finished(pair_t *p);
static void native_expired(pair_t *p);
static void native_answer(pair_t *p, int kind, int remember);
static void native_dial(pair_t *p, struct race *r, int rule);
static struct race *new_race(const unsigned char *addresses, int count, int delay_ms);
static void attempt_event(watch_t *w, uint32_t events);
static int race_timeout(void);
static void run_due_races(int64_t now);
static void bury_races(void);
static void native_accept(watch_t *listener_watch);
static void forget_listener(void *listener);
static void bury_listeners(void);
static void flush_messages(int64_t now);
static int flush_timeout(void);
typedef struct listener listener_t;
/* Listeners out of descriptors with nothing to shed with (relay thread, changed
 * under pairs_lock): watched again once their pause is over. */
static listener_t *paused_listeners;
static void resume_listeners(int64_t now);
/* Listeners (relay thread only) with accept failures counted but not yet told. */
static listener_t *failing_listeners;
static int failures_timeout(void);
static void tell_due_failures(int64_t now, listener_t *closing);
#define ACCEPT_PAUSE_MS 100
#define ACCEPT_FAILED_EVERY_MS 1000

static void username_release(username_t *u);

static void gate_unref(struct session_gate *g);
static void gate_count_ended(struct session_gate *g, int change);
static void client_release_key(struct session_gate *g, const unsigned char key[16]);

static void unref_pair(pair_t *p) {
  if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0) {
    username_release(p->user);
    gate_unref(p->gate);
    free(p);
  }
}

/* ---- pipes ---- */

/*
 * A new pipe. The session limits count two descriptors a session; the pipes
 * open (in flows and in the pool) have the descriptors those leave over, the
 * allowance (pipeAllowance(); -1: no account kept). Past it a pipe takes the
 * place of a session, while every server has one free; otherwise the flow
 * goes on without a pipe (copy_without_pipe). So relays backed up in many
 * sessions make the server refuse new clients at its limit, rather than
 * leave it without descriptors for them.
 */
static int new_pipe(int fds[2]) {
  int allowance = __atomic_load_n(&pipe_allowance, __ATOMIC_RELAXED);
  if (allowance >= 0 && pipes_open >= allowance && !may_borrow_pipe()) {
    errno = EMFILE;
    return -1;
  }
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -1;
  pipes_created++;
  __atomic_add_fetch(&pipes_open, 1, __ATOMIC_RELAXED);
  return 0;
}

static void close_pipe(int r, int w) {
  close(r);
  close(w);
  __atomic_sub_fetch(&pipes_open, 1, __ATOMIC_RELAXED);
}

static int acquire_pipe(flow_t *f) {
  if (pool_size > 0) {
    pool_size--;
    f->pipe_r = pool[pool_size][0];
    f->pipe_w = pool[pool_size][1];
    return 0;
  }
  int fds[2];
  if (new_pipe(fds) < 0) return -1;
  f->pipe_r = fds[0];
  f->pipe_w = fds[1];
  return 0;
}

/*
 * Before a small read: a pipe in the pool for what the destination may not
 * take (see copy_small). Made before the read, not after: a pipe that could
 * not be made once the bytes were read would leave them nowhere but in user
 * space. The pool is empty only until the next pipe comes back to it, and the
 * pipe made here is the one the next flow to need a pipe would have made, so
 * this costs no system call a relay with descriptors to spare would not make.
 */
static int spare_pipe_ready(void) {
  if (pool_size > 0) return 1;
  int fds[2];
  if (new_pipe(fds) < 0) return 0;
  pool[0][0] = fds[0];
  pool[0][1] = fds[1];
  pool_size = 1;
  return 1;
}

/* An empty pipe goes back to the pool; one still holding bytes, or borrowed (past the allowance), is closed. */
static void release_pipe(flow_t *f) {
  if (f->pipe_r < 0) return;
  /* The pool keeps no borrowed pipe: it would hold a session's place while idle. */
  int allowance = __atomic_load_n(&pipe_allowance, __ATOMIC_RELAXED);
  if (f->in_pipe == 0 && pool_size < POOL_MAX && (allowance < 0 || pipes_open <= allowance)) {
    pool[pool_size][0] = f->pipe_r;
    pool[pool_size][1] = f->pipe_w;
    pool_size++;
  } else {
    close_pipe(f->pipe_r, f->pipe_w);
  }
  f->pipe_r = f->pipe_w = -1;
  f->in_pipe = 0;
}

/* ---- pairs ---- */

/* The pair no longer has a deadline the scan must see (pairs_lock held). */
static void uncount_for_scan(pair_t *p) {
  if (p->counted && --idle_pairs == 0) idle_scan_every = SCAN_EVERY_MAX; /* no deadline left to serve */
  p->counted = 0;
}

static void unlink_pair(pair_t *p) {
  if (p->prev) p->prev->next = p->next;
  else pairs = p->next;
  if (p->next) p->next->prev = p->prev;
  uncount_for_scan(p);
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
  if (p->native) {
    if (p->gate) {
      gate_count_ended(p->gate, 1);
      p->ended_untold = 1;
      /* Its client's slot is free at once too; JavaScript gives back only
       * the slots of sessions handed over to it. */
      if (p->slot_held) client_release_key(p->gate, p->slot_key);
      p->slot_held = 0;
    }
    native_finished(p);
    return;
  }
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

/*
 * Moves one small read from fd[side] to the other socket through a stack
 * buffer (see SMALL_READ). What the destination cannot take at once waits in
 * the flow's pipe, as spliced bytes do. Returns -1 when the pair ended, 0
 * when the socket is known to be empty (or ended), 1 when splicing should go
 * on: the buffer filled, or a FIN may be waiting behind a short read.
 */
static int copy_small(pair_t *p, int side, int short_read_ends) {
  flow_t *f = &p->flow[side];
  char buf[SMALL_READ];
  ssize_t n;
  do n = recv(p->fd[side], buf, sizeof buf, 0); while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return 0;
    finish(p, END_ERROR, side, errno);
    return -1;
  }
  if (n == 0) {
    f->eof = 1;
    if (p->first_eof < 0) p->first_eof = side;
    return 0;
  }
  bytes_copied += (uint64_t)n; /* before the send: whoever gets the bytes sees them counted */
  ssize_t sent;
  do sent = send(p->fd[1 - side], buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL); while (sent < 0 && errno == EINTR);
  if (sent < 0 && errno != EAGAIN) {
    finish(p, END_ERROR, 1 - side, errno);
    return -1;
  }
  if (sent < 0) sent = 0;
  f->bytes += (uint64_t)sent;
  if (sent < n) {
    /* An empty pipe holds at least a page, even at the per-user pipe limit.
     * pump() made sure of one in the pool (spare_pipe_ready): this cannot fail. */
    if (f->pipe_r < 0 && acquire_pipe(f) < 0) {
      finish(p, END_ERROR, -1, errno);
      return -1;
    }
    ssize_t parked = write(f->pipe_w, buf + sent, (size_t)(n - sent));
    if (parked != n - sent) {
      finish(p, END_ERROR, -1, parked < 0 ? errno : EIO);
      return -1;
    }
    f->in_pipe = (size_t)parked;
  }
  f->bulk = n == (ssize_t)sizeof buf;
  return f->bulk || !short_read_ends ? 1 : 0;
}

/*
 * Moves bytes from fd[side] to the other socket without a pipe, for a flow
 * that cannot get one (the process or the system is out of descriptors):
 * peeks into a stack buffer, sends what the destination takes, and only then
 * consumes exactly that much from the source. Bytes the destination cannot
 * take stay in the source's receive queue, not in the proxy, so nothing
 * accepted is lost and TCP holds the sender back as a full pipe would; the
 * flow then waits for the destination to become writable (held_in_source).
 * A read costs one system call more than copy_small's, only while pipes
 * cannot be had. Returns -1 when the pair ended, else whether anything moved
 * (bytes or the source's FIN).
 */
static int copy_without_pipe(pair_t *p, int side, int short_read_ends) {
  flow_t *f = &p->flow[side];
  int from = p->fd[side], to = p->fd[1 - side];
  char buf[SMALL_READ];
  int moved = 0;
  for (;;) {
    ssize_t n;
    do n = recv(from, buf, sizeof buf, MSG_PEEK); while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN) return moved;
      finish(p, END_ERROR, side, errno);
      return -1;
    }
    if (n == 0) {
      f->eof = 1;
      if (p->first_eof < 0) p->first_eof = side;
      return 1;
    }
    ssize_t sent;
    do sent = send(to, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL); while (sent < 0 && errno == EINTR);
    if (sent < 0 && errno != EAGAIN) {
      finish(p, END_ERROR, 1 - side, errno);
      return -1;
    }
    if (sent > 0) {
      ssize_t taken;
      do taken = recv(from, buf, (size_t)sent, 0); while (taken < 0 && errno == EINTR);
      if (taken != sent) { /* only this thread reads the socket: the peeked bytes are there */
        finish(p, END_ERROR, taken < 0 ? side : -1, taken < 0 ? errno : EIO);
        return -1;
      }
      f->bytes += (uint64_t)sent;
      moved = 1;
    }
    if (sent < n) {
      /* The destination is full: its EPOLLOUT brings the flow back (on_socket_event). */
      if (watch_writable(p, 1 - side) < 0) {
        finish(p, END_ERROR, 1 - side, errno);
        return -1;
      }
      f->held_in_source = 1;
      return moved;
    }
    if (n < (ssize_t)sizeof buf && short_read_ends) return moved; /* a short read proves the socket empty */
  }
}

/*
 * The end of a turn: once nothing of the flow waits in a pipe, the pipe goes
 * back to the pool and the source's FIN is passed on, which ends the pair when
 * the other way is shut too; returns -1 when the pair ended.
 */
static int end_of_turn(pair_t *p, int side) {
  flow_t *f = &p->flow[side];
  if (f->in_pipe > 0) return 0;
  release_pipe(f);
  if (f->eof && !f->shut) {
    shutdown(p->fd[1 - side], SHUT_WR);
    f->shut = 1;
    if (p->flow[1 - side].shut) {
      finish(p, END_CLOSED, -1, 0);
      return -1;
    }
  }
  return 0;
}

/*
 * Whether a turn of this flow, holding no bytes in a pipe, can have the pipe
 * it may need: its own for splicing, or one in the pool for what a small
 * read's destination cannot take. Asked again at every turn, so a flow goes
 * back to pipes as soon as descriptors are free again.
 */
static int pipe_available(flow_t *f) {
  return f->bulk ? f->pipe_r >= 0 || acquire_pipe(f) == 0 : spare_pipe_ready();
}

/* A turn without a pipe (see copy_without_pipe); returns 0, or -1 when the pair ended. */
static int pump_without_pipe(pair_t *p, int side, int short_read_ends) {
  int moved = copy_without_pipe(p, side, short_read_ends);
  if (moved < 0) return -1;
  if (moved) p->last_active = now_ms();
  return end_of_turn(p, side);
}

/*
 * Moves what can move now in one direction; returns 0, or -1 when the pair
 * ended. `short_read_ends`: the event carried no FIN, so a short read proves
 * the socket empty (see read_client).
 */
static int pump(pair_t *p, int side, int short_read_ends) {
  flow_t *f = &p->flow[side];
  int from = p->fd[side], to = p->fd[1 - side];
  int moved = 0;
  int drained = 0; /* the source socket had nothing more: don't ask again until its next event */
  size_t spliced_in = 0;
  f->held_in_source = 0; /* set again if the destination is still full */
  /* Out of descriptors, a session goes on, only slower: trouble elsewhere
   * (other sessions holding every descriptor) must not end it. */
  if (f->in_pipe == 0 && !f->eof && !pipe_available(f)) return pump_without_pipe(p, side, short_read_ends);
  if (f->in_pipe == 0 && !f->eof && !f->bulk) {
    int more = copy_small(p, side, short_read_ends);
    if (more < 0) return -1;
    drained = !more;
    moved = 1;
  }
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
      /* Cannot fail: pipe_available() left the flow a pipe or the pool one. */
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
        spliced_in += (size_t)n;
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
  /* The socket ran dry after less than SMALL_READ: back to copying. A turn cut
   * short by a full pipe (the destination is slow) says nothing of the sender. */
  if (f->bulk && drained && spliced_in < SMALL_READ) f->bulk = 0;
  return end_of_turn(p, side);
}

static void on_socket_event(pair_t *p, int side, uint32_t events) {
  if (p->done) return;
  if (p->phase != 0) {
    native_event(p, side, events);
    return;
  }
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(p->fd[side], SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
      finish(p, END_ERROR, side, err);
      return;
    }
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    if (pump(p, side, !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) < 0) return;
  }
  /* Writable: only the direction into this socket cares, and only when it is blocked. */
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
    flow_t *into = &p->flow[1 - side];
    if (into->in_pipe > 0 || into->held_in_source) pump(p, 1 - side, 0);
  }
}

static void scan_idle(int64_t now) {
  pair_t *expired = NULL;
  pthread_mutex_lock(&pairs_lock);
  /* Recomputed from the pairs still here, so the interval grows back once
   * the sessions with short timeouts are gone (a listener closed, a reload). */
  int64_t every = SCAN_EVERY_MAX;
  pair_t *p = pairs;
  while (p) {
    pair_t *next = p->next;
    if (p->counted && p->scan_every < every) every = p->scan_every;
    if (p->phase != 0) {
      /* Negotiating: handed over outside the lock (it sends a message). */
      if (now >= p->deadline) {
        p->expired = expired;
        expired = p;
      }
    } else if (p->idle_ms > 0 && now - p->last_active >= p->idle_ms) {
      finish_locked(p, END_IDLE, -1, 0);
    }
    p = next;
  }
  idle_scan_every = every;
  pthread_mutex_unlock(&pairs_lock);
  while (expired) {
    p = expired;
    expired = p->expired;
    if (!p->done) native_expired(p);
  }
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
    if (c->kind == CMD_FORGET_LISTENER) {
      forget_listener(c->listener);
    } else if (c->kind == CMD_GO || c->kind == CMD_HAND_OVER) {
      if (!p->done) native_answer(p, c->kind, c->arg);
    } else if (c->kind == CMD_DIAL) {
      if (!p->done) native_dial(p, c->race, c->arg);
      else free(c->race);
    } else if (!p->done) {
      finish(p, c->kind == CMD_FAIL ? END_ERROR : END_CANCELLED, -1, p->add_errno);
    }
    if (p) unref_pair(p);
    free(c);
    c = next;
  }
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Polls without sleeping for up to `window` microseconds: the events found, or 0. */
static int poll_events(struct epoll_event *events, int window) {
  int64_t until = now_us() + window;
  do {
    int n = epoll_wait(epoll_fd, events, MAX_EVENTS, 0);
    if (n != 0) {
      if (n > 0) busy_poll_hits++;
      return n;
    }
  } while (now_us() < until);
  return 0;
}

static void *relay_thread(void *unused) {
  (void)unused;
  struct epoll_event events[MAX_EVENTS];
  /* Only a wait that brought events starts a poll: an idle thread sleeps. */
  int busy_polling = 0;
  for (;;) {
    pthread_mutex_lock(&pairs_lock);
    int timeout = idle_pairs > 0 ? (int)idle_scan_every : -1;
    scan_every_told = idle_pairs > 0 ? idle_scan_every : 0;
    pthread_mutex_unlock(&pairs_lock);
    int due = flush_timeout();
    if (paused_listeners && (due < 0 || due > ACCEPT_PAUSE_MS)) due = ACCEPT_PAUSE_MS;
    int failures_due = failing_listeners ? failures_timeout() : -1;
    if (failures_due >= 0 && (due < 0 || due > failures_due)) due = failures_due;
    int race_due = race_timeout();
    if (race_due >= 0 && (due < 0 || due > race_due)) due = race_due;
    int wait_ms = due >= 0 && (timeout < 0 || due < timeout) ? due : timeout;
    int window = __atomic_load_n(&busy_poll_us, __ATOMIC_RELAXED);
    udp_before_wait();
    int n = busy_polling && window > 0 && wait_ms != 0 ? poll_events(events, window) : 0;
    if (n == 0) n = epoll_wait(epoll_fd, events, MAX_EVENTS, wait_ms);
    busy_polling = n > 0;
    for (int i = 0; i < n; i++) {
      if (events[i].data.ptr == &wake_token) {
        run_commands();
        continue;
      }
      watch_t *w = events[i].data.ptr;
      if (w->pair == NULL && w->side == WATCH_UDP) udp_event(w, events[i].events);
      else if (w->pair == NULL) native_accept(w);
      else if (w->side == WATCH_ATTEMPT) attempt_event(w, events[i].events);
      else on_socket_event(w->pair, w->side, events[i].events);
    }
    if (timeout >= 0) {
      int64_t now = now_ms();
      /* A shorter timeout came since the last scan was planned (another
       * listener's, or a reload's): do not wait out the longer interval. */
      if (next_idle_scan > now + timeout) next_idle_scan = now + timeout;
      if (now >= next_idle_scan) {
        scan_idle(now);
        next_idle_scan = now + timeout;
      }
    }
    if (failing_listeners) tell_due_failures(now_ms(), NULL);
    if (race_timeout() == 0) run_due_races(now_ms());
    flush_messages(now_ms());
    if (paused_listeners) resume_listeners(now_ms());
    bury_ended();
    bury_races();
    bury_listeners();
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

int relay_thread_ready(int *epoll_out) {
  pthread_once(&thread_once, start_thread);
  if (thread_error == 0) *epoll_out = epoll_fd;
  return thread_error;
}

static void send_command_to(int kind, pair_t *p, void *listener, int arg);
#define send_command(kind, p) send_command_to((kind), (p), NULL, -1)

static void wake_relay_thread(void) {
  uint64_t one = 1;
  ssize_t ignored = write(wake_fd, &one, sizeof one);
  (void)ignored;
}

/*
 * The pair has a deadline the scan must see (pairs_lock held). Returns whether
 * the relay thread must be woken because its epoll_wait timeout is stale.
 */
static int count_for_scan(pair_t *p, int64_t timeout_ms) {
  if (!p->counted) {
    p->counted = 1;
    idle_pairs++;
  }
  /* Scan often enough that a short timeout is not overshot by much. */
  int64_t every = timeout_ms / 4;
  if (every < SCAN_EVERY_MIN) every = SCAN_EVERY_MIN;
  p->scan_every = every; /* the pair's latest deadline: a handshake's, then its idle timeout */
  if (every < idle_scan_every) idle_scan_every = every;
  return scan_every_told == 0 || idle_scan_every < scan_every_told;
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
  if (p->idle_ms > 0) wake = count_for_scan(p, p->idle_ms);
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

static command_t *new_command(int kind, pair_t *p, void *listener, int arg) {
  command_t *c = calloc(1, sizeof *c);
  if (!c) abort(); /* a failed malloc of a few dozen bytes leaves nothing sane to do */
  if (p) __atomic_add_fetch(&p->refs, 1, __ATOMIC_ACQ_REL);
  c->kind = kind;
  c->arg = arg;
  c->pair = p;
  c->listener = listener;
  c->next = NULL;
  return c;
}

static void queue_command(command_t *c) {
  pthread_mutex_lock(&queue_lock);
  if (queue_tail) queue_tail->next = c;
  else queue_head = c;
  queue_tail = c;
  pthread_mutex_unlock(&queue_lock);
  wake_relay_thread();
}

static void send_command_to(int kind, pair_t *p, void *listener, int arg) {
  queue_command(new_command(kind, p, listener, arg));
}

static void send_dial_command(pair_t *p, struct race *r, int rule) {
  command_t *c = new_command(CMD_DIAL, p, NULL, rule);
  c->race = r;
  queue_command(c);
}

/* ---- JavaScript side (main thread) ---- */

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

/*
 * Starts the relay thread (once per process) and makes `*tsfn` call the
 * dispatcher passed from JavaScript on the main thread; once per tsfn.
 */
static napi_value init_dispatcher(napi_env env, napi_callback_info info, const char *label, napi_threadsafe_function_call_js call,
                                  napi_threadsafe_function *tsfn) {
  size_t argc = 1;
  napi_value argv[1], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (*tsfn != NULL) {
    napi_throw_error(env, NULL, "already initialised");
    return NULL;
  }
  pthread_once(&thread_once, start_thread);
  if (thread_error != 0) {
    napi_throw_error(env, NULL, strerror(thread_error));
    return NULL;
  }
  CHECK(napi_create_string_utf8(env, label, NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, call, tsfn));
  CHECK(napi_unref_threadsafe_function(env, *tsfn));
  return NULL;
}

/* init(dispatcher): once per process, before start(). */
static napi_value js_init(napi_env env, napi_callback_info info) {
  return init_dispatcher(env, info, "socksgate-splice", call_js, &on_done);
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

static int usernames_live; /* read by stats(): a torn read only blurs a counter */

/* stats() -> { pipesCreated, pipesOpen, activePairs, nativeAccepted, nativeHandedOver, bytesCopied, busyPollHits, udpNativeDatagrams, udpHandedOver, usernames,
 * scanIntervalMs }. */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, value;
  const char *names[] = {"pipesCreated", "pipesOpen", "activePairs", "nativeAccepted", "nativeHandedOver", "bytesCopied", "busyPollHits",
                         "udpNativeDatagrams", "udpHandedOver", "usernames", "scanIntervalMs"};
  double values[] = {(double)pipes_created, (double)pipes_open, (double)active_pairs, (double)native_accepted, (double)native_handed_over, (double)bytes_copied,
                     (double)busy_poll_hits, (double)udp_native_datagrams, (double)udp_handed_to_js, (double)usernames_live,
                     (double)__atomic_load_n(&idle_scan_every, __ATOMIC_RELAXED)};
  CHECK(napi_create_object(env, &result));
  for (int i = 0; i < (int)(sizeof values / sizeof values[0]); i++) {
    CHECK(napi_create_double(env, values[i], &value));
    CHECK(napi_set_named_property(env, result, names[i], value));
  }
  return result;
}

/* ======================= native handshakes ======================= */

/* Negotiation phases of a native session; 0 (relaying) is the pair's own. */
enum { PHASE_RELAY = 0, PHASE_GREETING, PHASE_AUTH, PHASE_AUTH_WAIT, PHASE_REQUEST, PHASE_DECIDE_WAIT, PHASE_CONNECTING };
/* Where JavaScript's session picks a handed-over connection up. */
enum { RESUME_VERSION = 0, RESUME_AUTH = 1, RESUME_REQUEST = 2, RESUME_DENIED = 3, RESUME_LIMIT = 4, RESUME_CLIENT_LIMIT = 5 };
/* Why a connection is refused as soon as it is accepted (MSG_OPEN's n[3]). */
enum { ADMIT = 0, REFUSE_NOT_ALLOWED = 1, REFUSE_LIMIT = 2, REFUSE_CLIENT_LIMIT = 3 };
/* Messages to JavaScript. */
enum { MSG_OPEN = 0, MSG_AUTH = 1, MSG_DECIDE = 2, MSG_HAND_OVER = 3, MSG_END = 4, MSG_LISTENER_CLOSED = 5, MSG_ACCEPT_FAILED = 6, MSG_NAMED = 7 };
/* Messages nobody waits for (a session opened or ended, a name dialled from a
 * remembered answer) are posted together at most this late, so a short
 * session does not wake the main thread twice while the relay thread is busy
 * with the next handshake on the same core. */
#define FLUSH_MS 2

/* A greeting is at most 257 bytes, a username/password message 513, a
 * request 262: one message always fits; the rest is early payload. */
#define HANDSHAKE_BUFFER 1024
#define ACCEPT_BATCH 4 /* tries per event: only EINTR or ECONNABORTED make it try again */
#define METHOD_NONE 0x00
#define METHOD_USERPASS 0x02

typedef struct {
  unsigned char family; /* 4 or 6 */
  unsigned char prefix;
  unsigned char addr[16];
} network_t;

/*
 * A verdict JavaScript gave, remembered by the keyed hash of everything it
 * depended on, so the same question is not asked again: credentials it
 * accepted, and requests its rules allowed. The relay thread never decides
 * policy itself; it only repeats an answer for identical input. A reload
 * brings new settings, and with them empty caches.
 */
typedef struct {
  uint64_t tag[2]; /* all zero: empty */
  int rule;
} verdict_t;

#define CREDENTIALS_CACHED 256
#define DECISIONS_CACHED 1024

/*
 * A name's answer, remembered under a decision's key (the client, the
 * request, the user) for as long as the resolver allows (its reuseMs,
 * passed with CMD_DIAL): the rules' verdict and the lookup's addresses, so
 * that the next CONNECT to the same name is dialled at once instead of
 * asking JavaScript. Like a decision, it repeats an answer for identical
 * input; unlike one it expires, and a race over it that fails forgets it.
 */
typedef struct {
  uint64_t tag[2]; /* all zero: empty */
  int rule;
  int count;        /* addresses, 17 bytes each (see new_race) */
  int delay_ms;
  int64_t until;    /* now_ms() from which it is asked for again */
  unsigned char *addresses;
} named_t;

#define NAMES_CACHED 256

/* A listener's settings for new sessions; JavaScript replaces them on reload.
 * Shared by the listener and its sessions still negotiating (refs). */
typedef struct {
  int refs;
  double generation;
  unsigned char methods[2]; /* in the server's order of preference */
  int method_count;
  int ask_decide; /* JavaScript decides each request (request rules) */
  int remember_credentials; /* the built-in users: a password's verdict does not change until a reload */
  int key_client_port; /* some rule looks at the client's port: it is part of a decision's key */
  int64_t handshake_ms, connect_ms, idle_ms;
  uint64_t key[4]; /* two SipHash keys: 128-bit tags */
  verdict_t *credentials; /* CREDENTIALS_CACHED slots */
  verdict_t *decisions;   /* DECISIONS_CACHED slots */
  named_t *names;         /* NAMES_CACHED slots (relay thread only) */
  int allow_count; /* -1: every client may talk to the proxy */
  network_t allow[];
} settings_t;

static void settings_unref(settings_t *s) {
  if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  free(s->credentials);
  free(s->decisions);
  for (int i = 0; s->names && i < NAMES_CACHED; i++) free(s->names[i].addresses);
  free(s->names);
  free(s);
}

/* SipHash-2-4 (Aumasson and Bernstein), the reference algorithm. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                      \
  do {                                                                \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);         \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                            \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                            \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);         \
  } while (0)

static uint64_t siphash(uint64_t k0, uint64_t k1, const unsigned char *in, size_t len) {
  uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
  size_t whole = len - len % 8;
  for (size_t i = 0; i < whole; i += 8) {
    uint64_t m = 0;
    for (int j = 7; j >= 0; j--) m = (m << 8) | in[i + (size_t)j];
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t last = (uint64_t)len << 56;
  for (size_t j = 0; j < len % 8; j++) last |= (uint64_t)in[whole + j] << (8 * j);
  v3 ^= last;
  SIPROUND;
  SIPROUND;
  v0 ^= last;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static void tag_of(const settings_t *s, const unsigned char *in, size_t len, uint64_t tag[2]) {
  tag[0] = siphash(s->key[0], s->key[1], in, len);
  tag[1] = siphash(s->key[2], s->key[3], in, len);
  if ((tag[0] | tag[1]) == 0) tag[0] = 1; /* zero marks an empty slot */
}

/*
 * Usernames are interned: the sessions of one user share one copy. A proxy
 * holds thousands of sessions of a few users, and a copy each cost 32 bytes
 * of heap per session, about a twentieth of an idle session's memory. The
 * table's hash is keyed at random, so that chosen names cannot pile into one
 * chain. Any thread may drop a reference (unref_pair), so the table is under
 * a lock, which the relay thread takes once per RFC 1929 session.
 */
struct username {
  username_t *next;
  uint64_t hash;
  int refs;
  int len;
  unsigned char bytes[];
};
#define USERNAME_BUCKETS 1024
static username_t *usernames[USERNAME_BUCKETS];
static pthread_mutex_t usernames_lock = PTHREAD_MUTEX_INITIALIZER;
/* Set on the main thread with the first listener's settings, so before any
 * session of the relay thread needs it. */
static uint64_t username_key[2];
static int username_keyed;

static int username_key_ready(void) {
  if (!username_keyed) username_keyed = getrandom(username_key, sizeof username_key, 0) == (ssize_t)sizeof username_key;
  return username_keyed;
}

/* A reference to the interned copy of these bytes. */
static username_t *username_acquire(const unsigned char *bytes, int len) {
  pthread_mutex_lock(&usernames_lock);
  uint64_t hash = siphash(username_key[0], username_key[1], bytes, (size_t)len);
  username_t **head = &usernames[hash % USERNAME_BUCKETS];
  username_t *u = *head;
  while (u && !(u->hash == hash && u->len == len && memcmp(u->bytes, bytes, (size_t)len) == 0)) u = u->next;
  if (!u) {
    u = malloc(sizeof *u + (size_t)len);
    if (!u) abort();
    u->hash = hash;
    u->refs = 0;
    u->len = len;
    memcpy(u->bytes, bytes, (size_t)len);
    u->next = *head;
    *head = u;
    usernames_live++;
  }
  u->refs++;
  pthread_mutex_unlock(&usernames_lock);
  return u;
}

static void username_release(username_t *u) {
  if (!u) return;
  pthread_mutex_lock(&usernames_lock);
  if (--u->refs == 0) {
    username_t **at = &usernames[u->hash % USERNAME_BUCKETS];
    while (*at != u) at = &(*at)->next;
    *at = u->next;
    usernames_live--;
    free(u);
  }
  pthread_mutex_unlock(&usernames_lock);
}

/* The remembered verdict's rule for this tag, or -1. Compared in constant time. */
static int recall(const verdict_t *cache, int slots, const uint64_t tag[2]) {
  const verdict_t *v = &cache[tag[0] % (uint64_t)slots];
  uint64_t diff = (v->tag[0] ^ tag[0]) | (v->tag[1] ^ tag[1]);
  return diff == 0 ? v->rule : -1;
}

static void remember(verdict_t *cache, int slots, const uint64_t tag[2], int rule) {
  verdict_t *v = &cache[tag[0] % (uint64_t)slots];
  v->tag[0] = tag[0];
  v->tag[1] = tag[1];
  v->rule = rule;
}

/* Sessions of one client (an IPv4 address, or an IPv6 /64) that hold a slot. */
typedef struct client_slots {
  struct client_slots *next;
  unsigned char key[16];
  int32_t count;
} client_slots_t;

#define CLIENT_BUCKETS 4096

/*
 * A server's session count, shared with JavaScript as an Int32Array over its
 * first four fields (sessionGate()): the sessions JavaScript holds (written
 * by JavaScript only), the limit (likewise; INT32_MAX: none), those
 * accepted here whose MSG_OPEN JavaScript has not yet had (written here
 * only, atomically), and the limit per client (JavaScript's; INT32_MAX:
 * none). Every listener of the server points at it, so the relay thread
 * refuses a connection past a limit without asking JavaScript. The slots
 * per client are counted here alone: taken as a connection is accepted,
 * given back here when the session ends here, and by JavaScript
 * (releaseClient()) when it ends a session handed over to it.
 */
typedef struct session_gate {
  int32_t js_sessions;
  int32_t limit;
  int32_t unreported;
  int32_t per_client;
  /* Sessions ended here whose MSG_END JavaScript has not yet had (not shared):
   * their place is free at once, not only once JavaScript untracks them. */
  int32_t ended;
  int32_t refs; /* JavaScript's handle and ArrayBuffer, each listener, and each admitted native session */
  struct session_gate *prev_gate, *next_gate; /* every live gate (gates_lock), for may_borrow_pipe() */
  pthread_mutex_t clients_lock;
  uint64_t clients_key[2]; /* SipHash key: a client cannot choose addresses that share a bucket */
  client_slots_t *clients[CLIENT_BUCKETS];
} session_gate_t;

#define GATE_SHARED_BYTES (4 * sizeof(int32_t))

static pthread_mutex_t gates_lock = PTHREAD_MUTEX_INITIALIZER;
static session_gate_t *gates;

static void gate_unref(struct session_gate *g) {
  if (!g || __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  pthread_mutex_lock(&gates_lock);
  if (g->prev_gate) g->prev_gate->next_gate = g->next_gate;
  else if (gates == g) gates = g->next_gate;
  if (g->next_gate) g->next_gate->prev_gate = g->prev_gate;
  pthread_mutex_unlock(&gates_lock);
  for (int i = 0; i < CLIENT_BUCKETS; i++) {
    for (client_slots_t *c = g->clients[i], *next; c; c = next) {
      next = c->next;
      free(c);
    }
  }
  pthread_mutex_destroy(&g->clients_lock);
  free(g);
}

/* What a client is counted as: its IPv4 address (mapped or not), or its IPv6 /64, as 16 bytes. */
static void client_key(const struct sockaddr_storage *addr, unsigned char key[16]) {
  memset(key, 0, 16);
  if (addr->ss_family == AF_INET) {
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &((const struct sockaddr_in *)addr)->sin_addr, 4);
    return;
  }
  const unsigned char *a = (const unsigned char *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (memcmp(a, mapped, 12) == 0) memcpy(key, a, 16);
  else memcpy(key, a, 8);
}

/* The slot count of `key`, and where it is linked; NULL if it holds none (clients_lock held). */
static client_slots_t **client_find(session_gate_t *g, const unsigned char key[16]) {
  client_slots_t **at = &g->clients[siphash(g->clients_key[0], g->clients_key[1], key, 16) % CLIENT_BUCKETS];
  while (*at && memcmp((*at)->key, key, 16) != 0) at = &(*at)->next;
  return at;
}

/* Takes a slot for the client; 0 if it holds as many as it may. -1: no limit per client, nothing taken. */
static int client_take(session_gate_t *g, const struct sockaddr_storage *addr) {
  int32_t limit = g ? __atomic_load_n(&g->per_client, __ATOMIC_RELAXED) : INT32_MAX;
  if (limit == INT32_MAX) return -1;
  unsigned char key[16];
  client_key(addr, key);
  pthread_mutex_lock(&g->clients_lock);
  client_slots_t **at = client_find(g, key);
  int taken = 1;
  if (*at == NULL) {
    client_slots_t *c = calloc(1, sizeof *c);
    if (!c) abort();
    memcpy(c->key, key, 16);
    *at = c;
  }
  if ((*at)->count >= limit) taken = 0;
  else (*at)->count++;
  pthread_mutex_unlock(&g->clients_lock);
  return taken;
}

/* Gives a slot back; the client's entry goes with its last one. */
static void client_release(session_gate_t *g, const struct sockaddr_storage *addr) {
  unsigned char key[16];
  client_key(addr, key);
  client_release_key(g, key);
}

static void client_release_key(struct session_gate *g, const unsigned char key[16]) {
  pthread_mutex_lock(&g->clients_lock);
  client_slots_t **at = client_find(g, key);
  client_slots_t *c = *at;
  if (c && --c->count <= 0) {
    *at = c->next;
    free(c);
  }
  pthread_mutex_unlock(&g->clients_lock);
}

/*
 * Pipes open past the allowance (pipeAllowance()): each holds the two
 * descriptors a session is counted on for, so it takes a session's place
 * until it closes (gate_full, and JavaScript's own count through
 * borrowedPipes()).
 */
static int borrowed_pipes(void) {
  int allowance = __atomic_load_n(&pipe_allowance, __ATOMIC_RELAXED);
  int open = __atomic_load_n(&pipes_open, __ATOMIC_RELAXED);
  return allowance >= 0 && open > allowance ? open - allowance : 0;
}

/* The sessions a server holds: JavaScript's, those it has not yet heard of, less those ended here it has not yet heard of. */
static int64_t gate_held(session_gate_t *g) {
  return (int64_t)__atomic_load_n(&g->js_sessions, __ATOMIC_RELAXED) + __atomic_load_n(&g->unreported, __ATOMIC_ACQUIRE)
         - __atomic_load_n(&g->ended, __ATOMIC_ACQUIRE);
}

static void gate_count_ended(struct session_gate *g, int change) {
  __atomic_add_fetch(&g->ended, change, __ATOMIC_ACQ_REL);
}

/* Whether the server holds as many sessions as it may (borrowed pipes included). */
static int gate_full(session_gate_t *g) {
  if (!g) return 0;
  return gate_held(g) + borrowed_pipes() >= __atomic_load_n(&g->limit, __ATOMIC_RELAXED);
}

/*
 * Whether a pipe past the allowance may take a session's place: only while
 * every live gate keeps an eighth of its places (at least one) free besides,
 * so that new clients come before the pipes of sessions already served,
 * which can go on without one.
 */
static int may_borrow_pipe(void) {
  int may = 1;
  pthread_mutex_lock(&gates_lock);
  for (session_gate_t *g = gates; g && may; g = g->next_gate) {
    int32_t limit = __atomic_load_n(&g->limit, __ATOMIC_RELAXED);
    if (limit == INT32_MAX) continue;
    int64_t held = gate_held(g) + borrowed_pipes();
    int64_t kept = limit / 8 > 1 ? limit / 8 : 1;
    may = held + 1 + kept <= limit;
  }
  pthread_mutex_unlock(&gates_lock);
  return may;
}

struct listener {
  watch_t watch; /* pair NULL: a listener */
  int fd;        /* a dup of Node's listening socket, owned here */
  int spare_fd;  /* held back to accept-and-close when out of descriptors */
  double tag;
  int closed;
  settings_t *settings; /* pairs_lock */
  struct listener *next_dead;
  session_gate_t *gate; /* the server's, or NULL: no limit */
  int refs;       /* the relay thread until it buries it, JavaScript until MSG_LISTENER_CLOSED */
  int64_t paused_until; /* out of descriptors and nothing to shed with: not watched until then */
  struct listener *next_paused;
  /* Accepts that failed for want of descriptors since the last MSG_ACCEPT_FAILED, and when that was. */
  int failed_shed, failed_paused, failed_errno;
  int64_t failed_told;
  int failing; /* in failing_listeners: failures wait to be told */
  struct listener *next_failing;
};

static void listener_unref(listener_t *l) {
  if (__atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  settings_unref(l->settings);
  gate_unref(l->gate);
  free(l);
}

struct handshake {
  unsigned char buf[HANDSHAKE_BUFFER];
  int len;
  int eof;     /* the client sent FIN (or failed) while negotiating */
  int err;     /* the client's connection failed (errno), told to JavaScript on hand-over */
  int msg_len; /* the username/password message awaiting JavaScript's verdict */
  int full;    /* the last read stopped at a full buffer: the socket may hold more */
  int unread;  /* the client may hold bytes no event will announce: an event came while it was
                  not being read, or a read stopped at a full buffer */
  int request_bytes;   /* the request's length in buf (a name's is longer than p->request): early bytes follow it */
  int naming;          /* a CONNECT to a name: JavaScript resolves it (and decides), then names the address to dial */
  int dial_local;      /* connect() failed at once on a socket whose address is the wildcard: 4 or 6, else 0 */
  int dial_local_port; /* and its port (0: the kernel released it) */
  struct race *race;   /* a name's connects, while they run (see native_dial) */
  int dial_failed;     /* the address (its index in the race) whose failure the session is handed over with, -1: none */
  uint64_t name_tag[2]; /* a name's request: its key in settings->names */
  int reused;          /* the race is over a remembered answer (settings->names), not one JavaScript just gave */
  settings_t *settings; /* a reference: the listener's when this session was accepted */
  struct sockaddr_storage client;
};

static void end_race(handshake_t *h);

static void free_handshake(pair_t *p) {
  if (!p->hs) return;
  end_race(p->hs);
  settings_unref(p->hs->settings);
  free(p->hs);
  p->hs = NULL;
}

typedef struct message {
  struct message *next;
  int type;
  pair_t *p; /* holds a reference; NULL for MSG_LISTENER_CLOSED */
  listener_t *listener; /* MSG_OPEN and MSG_LISTENER_CLOSED */
  double n[10];
  int len;
  char text[INET6_ADDRSTRLEN];
  unsigned char data[];
} message_t;

static napi_threadsafe_function on_native;
static int64_t native_refs; /* main thread: open listeners + sessions JavaScript knows; refs on_native while > 0 */
static double next_native_id;
static listener_t *dead_listeners; /* freed after the current batch of events */
/* Relay thread: messages not yet posted, in order, and when the oldest was queued. */
static message_t *unsent_head, *unsent_tail;
static int unsent_urgent;
static int64_t unsent_since;

/* Queues a message for JavaScript (relay thread); see FLUSH_MS. */
static void post(message_t *m) {
  if (m->p) __atomic_add_fetch(&m->p->refs, 1, __ATOMIC_ACQ_REL);
  if (!unsent_head) unsent_since = now_ms();
  if (unsent_tail) unsent_tail->next = m;
  else unsent_head = m;
  unsent_tail = m;
  if (m->type != MSG_OPEN && m->type != MSG_END && m->type != MSG_NAMED) unsent_urgent = 1;
}

static void free_messages(message_t *m) {
  while (m) {
    message_t *next = m->next;
    if (m->p) unref_pair(m->p);
    free(m);
    m = next;
  }
}

/* Posts the queued messages as one call when one is awaited or the oldest is due. */
static void flush_messages(int64_t now) {
  if (!unsent_head || (!unsent_urgent && now - unsent_since < FLUSH_MS)) return;
  message_t *batch = unsent_head;
  unsent_head = unsent_tail = NULL;
  unsent_urgent = 0;
  if (napi_call_threadsafe_function(on_native, batch, napi_tsfn_nonblocking) != napi_ok) free_messages(batch);
}

/* How long epoll_wait may sleep before queued messages are due (-1: none queued). */
static int flush_timeout(void) {
  if (!unsent_head) return -1;
  int64_t left = unsent_since + FLUSH_MS - now_ms();
  return left > 0 ? (int)left : 0;
}

static message_t *message(int type, pair_t *p, const void *data, int len) {
  message_t *m = calloc(1, sizeof *m + (size_t)len);
  if (!m) abort();
  m->type = type;
  m->p = p;
  m->len = len;
  if (len > 0 && data) memcpy(m->data, data, (size_t)len);
  return m;
}

/* Sends all of a short handshake message; a fresh socket's buffer always has room. */
static int send_all(int fd, const void *data, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EAGAIN;
    data = (const char *)data + n;
    len -= (size_t)n;
  }
  return 0;
}

/* A message whose payload starts with the username (a flag byte, a length byte, the bytes). */
static message_t *message_with_user(int type, pair_t *p, const unsigned char *rest, int rest_len) {
  int ulen = p->user ? p->user->len : 0;
  message_t *m = message(type, p, NULL, 2 + ulen + rest_len);
  m->data[0] = p->user != NULL;
  m->data[1] = (unsigned char)ulen;
  if (ulen > 0) memcpy(m->data + 2, p->user->bytes, (size_t)ulen);
  if (rest_len > 0) memcpy(m->data + 2 + ulen, rest, (size_t)rest_len);
  return m;
}

static int resume_phase(int phase) {
  switch (phase) {
    case PHASE_GREETING: return RESUME_VERSION;
    case PHASE_AUTH:
    case PHASE_AUTH_WAIT: return RESUME_AUTH;
    default: return RESUME_REQUEST;
  }
}

/*
 * Gives the client connection to JavaScript, which goes on from `resume` with
 * the bytes read so far. The descriptor is JavaScript's from here.
 */
static void hand_over(pair_t *p, int resume, int err, int timed_out) {
  handshake_t *h = p->hs;
  p->slot_held = 0; /* the session's now, which gives it back (releaseClient()) */
  pthread_mutex_lock(&pairs_lock);
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, p->fd[0], NULL);
  if (p->fd[1] >= 0) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, p->fd[1], NULL);
    close(p->fd[1]);
    p->fd[1] = -1;
  }
  p->done = 1;
  unlink_pair(p);
  p->next = ended;
  ended = p;
  pthread_mutex_unlock(&pairs_lock);
  native_handed_over++;
  message_t *m = message_with_user(MSG_HAND_OVER, p, h ? h->buf : NULL, h ? h->len : 0);
  m->n[0] = p->fd[0];
  m->n[1] = resume;
  m->n[2] = p->method;
  m->n[3] = err;
  m->n[4] = timed_out;
  m->n[5] = h ? h->err : 0;
  m->n[6] = h ? h->dial_local : 0;
  m->n[7] = h ? h->dial_local_port : 0;
  m->n[8] = h ? h->dial_failed : -1;
  free_handshake(p);
  post(m);
}

/*
 * Drops what the client sent and nobody read, so that closing its socket
 * sends a FIN. Linux closes a TCP socket whose receive queue holds unread
 * bytes with RST instead (tcp_close(), as RFC 2525 2.17 advises), and a
 * shutdown(SHUT_WR) first does not spare the client that: the RST still
 * follows. Only an empty queue makes the close clean, so this drains rather
 * than shuts down. A session ending while it negotiates can hold such bytes:
 * the relay thread reads nothing while JavaScript checks a password or a
 * request, or while the destination is dialled, so a request pipelined
 * behind the credentials waits there, where the node engine has read it into
 * its buffer and closes cleanly. Called only when the session is over (the
 * relay thread closes next, or JavaScript's session does at once, without
 * reading), so nobody needs the bytes. Bounded, so that a client that keeps
 * sending cannot hold the relay thread: past the bound (more than any
 * handshake and early data a client sends before its answer), and for bytes
 * that arrive after, the close is a reset, as it is on the node engine for
 * bytes that arrive after its last read.
 */
#define DISCARD_LIMIT (64 * 1024)
static void discard_unread(int fd) {
  char scratch[SMALL_READ];
  size_t dropped = 0;
  while (dropped < DISCARD_LIMIT) {
    ssize_t n = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
    if (n > 0) dropped += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else return; /* empty (EAGAIN), the client's FIN, or a failure: nothing left to read */
  }
}

/* Closes with RST instead of FIN: a zero linger time makes close() abort the connection. */
static void close_with_reset(int fd) {
  struct linger now = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
  close(fd);
}

/*
 * finish_locked() of a native pair: close what this module owns, report the
 * end. As the JavaScript relays do, a failure on one side reaches the other
 * as a reset, and the relay's own failure resets both. A pair ended while
 * still negotiating (a shutdown) may leave client bytes unread: they are
 * dropped first, so the close is the FIN the node engine sends.
 */
static void native_finished(pair_t *p) {
  for (int side = 0; side < 2; side++) {
    if (p->fd[side] < 0) continue;
    int reset = p->reason == END_ERROR && p->error_side != side;
    if (reset) {
      close_with_reset(p->fd[side]);
      continue;
    }
    if (side == 0 && p->phase != PHASE_RELAY) discard_unread(p->fd[side]);
    close(p->fd[side]);
  }
  message_t *m = message_with_user(MSG_END, p, p->request, p->request_len);
  m->n[0] = (double)p->flow[0].bytes;
  m->n[1] = (double)p->flow[1].bytes;
  m->n[2] = p->reason;
  m->n[3] = p->first_eof;
  m->n[4] = p->error_side;
  m->n[5] = p->error_errno;
  m->n[6] = p->rule;
  m->n[7] = p->method;
  /* SOCKS5 is known once its first byte was read. */
  m->n[8] = p->method >= 0 || (p->hs && p->hs->len > 0 && p->hs->buf[0] == 5) ? 5 : 0;
  /* Replied and relaying: not a session cut short while it was still
   * connecting (a shutdown), whose request was read all the same. */
  m->n[9] = p->phase == PHASE_RELAY;
  free_handshake(p);
  post(m);
}

static void consume(handshake_t *h, int n) {
  memmove(h->buf, h->buf + n, (size_t)(h->len - n));
  h->len -= n;
}

static int64_t deadline_after(pair_t *p, int64_t ms) {
  pthread_mutex_lock(&pairs_lock);
  count_for_scan(p, ms);
  pthread_mutex_unlock(&pairs_lock);
  return now_ms() + ms;
}

static void connected(pair_t *p, int watched);

/*
 * Reads what the client has sent, up to the buffer's end. `whole`: until the
 * socket says EAGAIN; else a short read ends it, as any byte arriving later
 * raises a new edge (a FIN that came with the data did not: the caller asks
 * for `whole` when the event says EPOLLRDHUP).
 */
static void read_client(pair_t *p, int whole) {
  handshake_t *h = p->hs;
  while (h->len < HANDSHAKE_BUFFER && !h->eof) {
    size_t room = HANDSHAKE_BUFFER - (size_t)h->len;
    ssize_t n = recv(p->fd[0], h->buf + h->len, room, 0);
    if (n > 0) {
      h->len += (int)n;
      if ((size_t)n < room && !whole) break;
    } else if (n == 0) h->eof = 1;
    else if (errno == EAGAIN) break;
    else if (errno != EINTR) {
      h->eof = 1;
      h->err = errno; /* a reset is read once: JavaScript's session is told of it */
    }
  }
  /* Stopped by a full buffer, not an empty socket: the rest raises no new edge. */
  h->full = h->len == HANDSHAKE_BUFFER;
  if (h->full) h->unread = 1;
}

/*
 * The client's connection failed (a reset, seen as an event while the
 * client waits, or as a handshake message that could not be sent).
 * JavaScript's session is told of it as of a failed read, so it
 * records what the node engine does (client-gone, the error) rather than a
 * plain close. EAGAIN (a full send buffer, which a fresh socket never has) is
 * not the client's failure.
 */
static void client_failed(handshake_t *h, int err) {
  if (err == EAGAIN || h->err != 0) return;
  h->err = err;
  h->eof = 1;
}

/* Step results. */
enum { STEP_MORE = 0, STEP_NEXT = 1, STEP_STOP = 2 };

static int step_greeting(pair_t *p) {
  handshake_t *h = p->hs;
  if (h->len < 1) return STEP_MORE;
  if (h->buf[0] != 5 || (h->len >= 2 && h->buf[1] == 0)) { /* SOCKS4, or not SOCKS: JavaScript's at once */
    hand_over(p, RESUME_VERSION, 0, 0);
    return STEP_STOP;
  }
  if (h->len < 2) return STEP_MORE;
  int count = h->buf[1];
  if (h->len < 2 + count) return STEP_MORE;
  int chosen = -1;
  const settings_t *settings = h->settings;
  for (int i = 0; i < settings->method_count && chosen < 0; i++) {
    if (memchr(h->buf + 2, settings->methods[i], (size_t)count)) chosen = settings->methods[i];
  }
  if (chosen < 0) { /* the refusal is JavaScript's to send and log */
    hand_over(p, RESUME_VERSION, 0, 0);
    return STEP_STOP;
  }
  consume(h, 2 + count);
  p->method = chosen;
  p->phase = chosen == METHOD_USERPASS ? PHASE_AUTH : PHASE_REQUEST;
  unsigned char reply[2] = {5, (unsigned char)chosen};
  int err = send_all(p->fd[0], reply, 2);
  if (err != 0) {
    client_failed(h, err);
    hand_over(p, resume_phase(p->phase), 0, 0);
    return STEP_STOP;
  }
  return STEP_NEXT;
}

/* The password is right: say so and go on to the request. */
static int credentials_accepted(pair_t *p) {
  consume(p->hs, p->hs->msg_len);
  p->phase = PHASE_REQUEST;
  unsigned char status[2] = {1, 0};
  int err = send_all(p->fd[0], status, 2);
  if (err != 0) {
    client_failed(p->hs, err);
    hand_over(p, RESUME_REQUEST, 0, 0);
    return STEP_STOP;
  }
  return STEP_NEXT;
}

static int step_credentials(pair_t *p) {
  handshake_t *h = p->hs;
  if (h->len < 2) return STEP_MORE;
  if (h->buf[0] != 1) {
    hand_over(p, RESUME_AUTH, 0, 0);
    return STEP_STOP;
  }
  int ulen = h->buf[1];
  if (h->len < 3 + ulen) return STEP_MORE;
  int plen = h->buf[2 + ulen];
  if (h->len < 3 + ulen + plen) return STEP_MORE;
  h->msg_len = 3 + ulen + plen;
  username_release(p->user);
  p->user = username_acquire(h->buf + 2, ulen);
  if (h->settings->remember_credentials) {
    uint64_t tag[2];
    tag_of(h->settings, h->buf, (size_t)h->msg_len, tag);
    if (recall(h->settings->credentials, CREDENTIALS_CACHED, tag) >= 0) return credentials_accepted(p);
  }
  p->phase = PHASE_AUTH_WAIT;
  post(message(MSG_AUTH, p, h->buf, h->msg_len));
  return STEP_STOP;
}

static void start_connect(pair_t *p);

/*
 * Everything a rule can look at in a CONNECT on this listener: the client's
 * address (and port, when a rule looks at ports), the request (an address's,
 * or a name's up to 262 bytes), and the username. Its tag keys a remembered
 * decision, or a name's remembered answer.
 */
static void request_key(pair_t *p, const unsigned char *request, int request_len, uint64_t tag[2]) {
  const handshake_t *h = p->hs;
  unsigned char key[18 + 2 + 262 + 2 + 255];
  size_t at = 0;
  memset(key, 0, 20);
  if (h->client.ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&h->client;
    key[0] = 6;
    memcpy(key + 2, &a->sin6_addr, 16);
    if (h->settings->key_client_port) memcpy(key + 18, &a->sin6_port, 2);
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&h->client;
    key[0] = 4;
    memcpy(key + 2, &a->sin_addr, 4);
    if (h->settings->key_client_port) memcpy(key + 18, &a->sin_port, 2);
  }
  at = 20;
  memcpy(key + at, request, (size_t)request_len);
  at += (size_t)request_len;
  key[at++] = p->user != NULL;
  int ulen = p->user ? p->user->len : 0;
  key[at++] = (unsigned char)ulen;
  if (ulen > 0) memcpy(key + at, p->user->bytes, (size_t)ulen);
  at += (size_t)ulen;
  tag_of(h->settings, key, at, tag);
}

static void decision_key(pair_t *p, uint64_t tag[2]) {
  request_key(p, p->request, p->request_len, tag);
}

/* The answer remembered for this name's request, while it holds; NULL: ask JavaScript. Compared in constant time. */
static const named_t *recall_name(const settings_t *s, const uint64_t tag[2]) {
  const named_t *n = &s->names[tag[0] % NAMES_CACHED];
  uint64_t diff = (n->tag[0] ^ tag[0]) | (n->tag[1] ^ tag[1]);
  return diff == 0 && now_ms() < n->until ? n : NULL;
}

/* Forgets the answer remembered for this name's request, if any. */
static void forget_name(settings_t *s, const uint64_t tag[2]) {
  named_t *n = &s->names[tag[0] % NAMES_CACHED];
  if (n->tag[0] != tag[0] || n->tag[1] != tag[1]) return;
  free(n->addresses);
  memset(n, 0, sizeof *n);
}

/* Whether a request's address (ATYP 1: 4 bytes, 4: 16) is 0.0.0.0, ::, or ::ffff:0.0.0.0. */
static int unspecified_address(int atyp, const unsigned char *addr) {
  static const unsigned char zeros[16] = {0};
  if (atyp == 1) return memcmp(addr, zeros, 4) == 0;
  if (memcmp(addr, zeros, 10) != 0 || memcmp(addr + 12, zeros, 4) != 0) return 0;
  return (addr[10] == 0 && addr[11] == 0) || (addr[10] == 0xff && addr[11] == 0xff);
}

/*
 * A CONNECT to a name (ATYP 3): JavaScript decides it and resolves the name,
 * then gives the addresses to race (CMD_DIAL, native_dial), or takes the
 * connection (no address, a refusal). The connect deadline runs from now, as
 * the node engine's dial budget covers the lookup too. The request stays in
 * the buffer: p->request gets the address form of the address that wins.
 */
static int step_named_request(pair_t *p) {
  handshake_t *h = p->hs;
  if (h->len < 5) return STEP_MORE;
  int size = 7 + h->buf[4];
  if (h->buf[4] == 0) { /* a zero-length name: JavaScript refuses it */
    hand_over(p, RESUME_REQUEST, 0, 0);
    return STEP_STOP;
  }
  if (h->len < size) return STEP_MORE;
  if (h->buf[size - 2] == 0 && h->buf[size - 1] == 0) {
    hand_over(p, RESUME_REQUEST, 0, 0);
    return STEP_STOP;
  }
  h->request_bytes = size;
  h->naming = 1;
  p->phase = PHASE_DECIDE_WAIT;
  p->deadline = deadline_after(p, h->settings->connect_ms);
  request_key(p, h->buf, size, h->name_tag);
  const named_t *known = recall_name(h->settings, h->name_tag);
  if (known) {
    /* JavaScript learns what was asked for (for the record) without being waited for. */
    h->reused = 1;
    post(message_with_user(MSG_NAMED, p, h->buf, size));
    native_dial(p, new_race(known->addresses, known->count, known->delay_ms), known->rule);
    return STEP_STOP;
  }
  post(message_with_user(MSG_DECIDE, p, h->buf, size));
  return STEP_STOP;
}

static int step_request(pair_t *p) {
  handshake_t *h = p->hs;
  if (h->len < 4) return STEP_MORE;
  /* CONNECT to an address literal, or to a name (which JavaScript looks up); anything else is JavaScript's. */
  int atyp = h->buf[3];
  if (h->buf[0] == 5 && h->buf[1] == 1 && h->buf[2] == 0 && atyp == 3) return step_named_request(p);
  if (h->buf[0] != 5 || h->buf[1] != 1 || h->buf[2] != 0 || (atyp != 1 && atyp != 4)) {
    hand_over(p, RESUME_REQUEST, 0, 0);
    return STEP_STOP;
  }
  int size = atyp == 1 ? 10 : 22;
  if (h->len < size) return STEP_MORE;
  /* Port 0, and the unspecified address (which Linux connects to this host): JavaScript refuses them. */
  if ((h->buf[size - 2] == 0 && h->buf[size - 1] == 0) || unspecified_address(atyp, h->buf + 4)) {
    hand_over(p, RESUME_REQUEST, 0, 0);
    return STEP_STOP;
  }
  memcpy(p->request, h->buf, (size_t)size);
  p->request_len = size;
  h->request_bytes = size;
  if (h->settings->ask_decide) {
    uint64_t tag[2];
    decision_key(p, tag);
    p->rule = recall(h->settings->decisions, DECISIONS_CACHED, tag);
    if (p->rule < 0) {
      p->phase = PHASE_DECIDE_WAIT;
      post(message_with_user(MSG_DECIDE, p, p->request, size));
      return STEP_STOP;
    }
  }
  start_connect(p);
  return STEP_STOP;
}

/* Steps the negotiation over the bytes read so far. */
static void advance(pair_t *p) {
  for (;;) {
    int result;
    switch (p->phase) {
      case PHASE_GREETING: result = step_greeting(p); break;
      case PHASE_AUTH: result = step_credentials(p); break;
      case PHASE_REQUEST: result = step_request(p); break;
      default: return;
    }
    if (result == STEP_STOP) return;
    if (result == STEP_MORE && p->hs->full && p->hs->len < HANDSHAKE_BUFFER) {
      read_client(p, 1); /* room again after a message was consumed: no event will say so */
      continue;
    }
    if (result == STEP_MORE) {
      /* A message cut short by the client's end: JavaScript logs the truncation. */
      if (p->hs->eof) hand_over(p, resume_phase(p->phase), 0, 0);
      return;
    }
  }
}

/*
 * connect() failed at once: Node words such a failure with the failed
 * socket's own address (internalConnect in lib/net.js: "connect ENETUNREACH
 * 127.255.255.255:80 - Local (0.0.0.0:0)"), which JavaScript can only learn
 * from here. The relay thread never binds its outbound sockets, so the kernel
 * leaves the wildcard address (and port 0, a port it had taken released):
 * only that is passed on (family and port); any other address is not, and
 * JavaScript words the failure without it.
 */
static int wildcard_local(int fd, int *port) {
  struct sockaddr_storage local;
  socklen_t len = sizeof local;
  if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) return 0;
  static const unsigned char any6[16] = {0};
  if (local.ss_family == AF_INET && ((struct sockaddr_in *)&local)->sin_addr.s_addr == htonl(INADDR_ANY)) {
    *port = ntohs(((struct sockaddr_in *)&local)->sin_port);
    return 4;
  }
  if (local.ss_family == AF_INET6 && memcmp(&((struct sockaddr_in6 *)&local)->sin6_addr, any6, 16) == 0) {
    *port = ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
    return 6;
  }
  return 0;
}

static void failed_at_once(handshake_t *h, int fd) {
  h->dial_local = wildcard_local(fd, &h->dial_local_port);
}

static void connect_failed(pair_t *p, int err, int timed_out) {
  hand_over(p, RESUME_REQUEST, err, timed_out);
}

/*
 * Starts a non-blocking connect to `addr` (family 4: its first 4 bytes, 6: 16)
 * and `port` (2 bytes, network order), with Nagle off. Returns 1 when it
 * connected at once, 0 when it is under way (not yet watched), or -errno when
 * it failed; *fd is the socket, or -1 when none could be made.
 */
static int open_connect(int family, const unsigned char *addr, const unsigned char *port, int *fd) {
  struct sockaddr_storage to;
  socklen_t to_len;
  memset(&to, 0, sizeof to);
  if (family == 6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&to;
    a->sin6_family = AF_INET6;
    memcpy(&a->sin6_addr, addr, 16);
    memcpy(&a->sin6_port, port, 2);
    to_len = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&to;
    a->sin_family = AF_INET;
    memcpy(&a->sin_addr, addr, 4);
    memcpy(&a->sin_port, port, 2);
    to_len = sizeof *a;
  }
  *fd = socket(family == 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (*fd < 0) return -errno;
  int one = 1;
  setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(*fd, (struct sockaddr *)&to, to_len) == 0) return 1;
  if (errno != EINPROGRESS) return -errno;
  /* Over loopback the handshake has usually completed inside connect(): a
   * connected socket has a peer, and the epoll round for EPOLLOUT is saved. */
  struct sockaddr_storage peer;
  socklen_t peer_len = sizeof peer;
  return getpeername(*fd, (struct sockaddr *)&peer, &peer_len) == 0 ? 1 : 0;
}

static void start_connect(pair_t *p) {
  handshake_t *h = p->hs;
  int v6 = p->request[3] == 4;
  p->phase = PHASE_CONNECTING;
  p->deadline = deadline_after(p, h->settings->connect_ms);
  int outcome = open_connect(v6 ? 6 : 4, p->request + 4, p->request + (v6 ? 20 : 8), &p->fd[1]);
  if (outcome > 0) {
    connected(p, 0);
    return;
  }
  if (outcome < 0) {
    if (p->fd[1] >= 0) failed_at_once(h, p->fd[1]);
    connect_failed(p, -outcome, 0);
    return;
  }
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &p->watch[1]};
  pthread_mutex_lock(&pairs_lock);
  int rc = epoll_ctl(epoll_fd, EPOLL_CTL_ADD, p->fd[1], &ev);
  pthread_mutex_unlock(&pairs_lock);
  if (rc < 0) connect_failed(p, errno, 0);
}

/* The destination answered: reply, pass on early bytes, and start splicing.
 * `watched`: the socket is in the epoll set already (its connect took an
 * EPOLLOUT round), so it is modified rather than added. */
static void connected(pair_t *p, int watched) {
  handshake_t *h = p->hs;
  struct sockaddr_storage local;
  socklen_t len = sizeof local;
  unsigned char reply[22] = {5, 0, 0};
  size_t reply_len;
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  int ok = getsockname(p->fd[1], (struct sockaddr *)&local, &len) == 0;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&local;
  if (ok && local.ss_family == AF_INET6 && memcmp(&a6->sin6_addr, mapped, 12) == 0) {
    /* An IPv4-mapped destination: the address is IPv4, as Node's sessions reply. */
    reply[3] = 1;
    memcpy(reply + 4, (unsigned char *)&a6->sin6_addr + 12, 4);
    memcpy(reply + 8, &a6->sin6_port, 2);
    reply_len = 10;
  } else if (ok && local.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&local;
    reply[3] = 4;
    memcpy(reply + 4, &a->sin6_addr, 16);
    memcpy(reply + 20, &a->sin6_port, 2);
    reply_len = 22;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&local;
    reply[3] = 1;
    memcpy(reply + 4, &a->sin_addr, 4);
    memcpy(reply + 8, &a->sin_port, 2);
    reply_len = 10;
  }
  pthread_mutex_lock(&pairs_lock);
  p->phase = PHASE_RELAY;
  if (p->idle_ms > 0) count_for_scan(p, p->idle_ms);
  else uncount_for_scan(p);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = &p->watch[1]};
  int rc = epoll_ctl(epoll_fd, watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, p->fd[1], &ev);
  pthread_mutex_unlock(&pairs_lock);
  int early = h->len - h->request_bytes;
  int err = rc < 0 ? errno : send_all(p->fd[0], reply, reply_len);
  if (err != 0) {
    finish(p, END_ERROR, rc < 0 ? -1 : 0, err);
    return;
  }
  if (early > 0 && (err = send_all(p->fd[1], h->buf + h->request_bytes, (size_t)early)) != 0) {
    finish(p, END_ERROR, 1, err);
    return;
  }
  p->flow[0].bytes = (uint64_t)(early > 0 ? early : 0);
  int unread = h->unread || h->eof; /* a FIN read with the request is passed on by pump() */
  free_handshake(p);
  p->last_active = now_ms();
  /* The destination's registration for input above reports bytes already
   * waiting; the client's edge came and went unread only if it was flagged. */
  if (unread) pump(p, 0, 0);
}

static void native_event(pair_t *p, int side, uint32_t events) {
  if (side == 1) {
    if (p->phase != PHASE_CONNECTING) return;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(p->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err != 0) connect_failed(p, err, 0);
    else connected(p, 1);
    return;
  }
  /* While JavaScript decides or the destination is dialled, the client waits unread. */
  if (p->phase == PHASE_AUTH_WAIT || p->phase == PHASE_DECIDE_WAIT || p->phase == PHASE_CONNECTING) {
    p->hs->unread = 1;
    /* A reset while JavaScript checks the password or decides the request,
     * or while the destination is dialled: the client is gone, and a bcrypt
     * check or a dial could go on for nothing (and a refused password be
     * recorded as a login failure). It is handed over with the client's
     * error: the hand-over drops a check still waiting (#letGo in
     * server/native.ts), a verdict that comes after it is ignored (the pair
     * is done), and JavaScript's session writes the record the node engine
     * writes, which reads the reset as it comes. (A FIN alone is a
     * half-close: EPOLLRDHUP, not EPOLLHUP, and the session goes on.) */
    if (events & (EPOLLERR | EPOLLHUP)) {
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(p->fd[0], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err == 0) err = ECONNRESET;
      client_failed(p->hs, err);
      hand_over(p, resume_phase(p->phase), 0, 0);
    }
    return;
  }
  read_client(p, (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0);
  advance(p);
}

/*
 * JavaScript's verdict on credentials or on a request: go on, or take the
 * connection. `remember` >= 0: the same input gets the same verdict until a
 * reload (for a request: the index of the rule that allowed it).
 */
static void native_answer(pair_t *p, int kind, int remember_as) {
  handshake_t *h = p->hs;
  if (p->phase != PHASE_AUTH_WAIT && p->phase != PHASE_DECIDE_WAIT) return;
  if (kind == CMD_HAND_OVER || (p->phase == PHASE_DECIDE_WAIT && h->naming)) { /* a name needs an address: CMD_DIAL */
    hand_over(p, resume_phase(p->phase), 0, 0);
    return;
  }
  uint64_t tag[2];
  if (p->phase == PHASE_DECIDE_WAIT) {
    p->rule = remember_as;
    if (remember_as >= 0) {
      decision_key(p, tag);
      remember(h->settings->decisions, DECISIONS_CACHED, tag, remember_as);
    }
    start_connect(p);
    return;
  }
  if (remember_as >= 0) {
    tag_of(h->settings, h->buf, (size_t)h->msg_len, tag);
    remember(h->settings->credentials, CREDENTIALS_CACHED, tag, 1);
  }
  if (credentials_accepted(p) == STEP_STOP) return;
  read_client(p, 1); /* whatever came while JavaScript decided raised no event we acted on */
  advance(p);
}

/* ---- a name's addresses, raced (Happy Eyeballs, RFC 8305) ---- */

/*
 * The connects to a name's addresses, as the direct dialer makes them
 * (connectFirst in src/upstream/dialer.ts): in JavaScript's order (families
 * interleaved), the next one as soon as one fails or when `delay_ms` passed
 * without an answer, the first to connect wins and the others are closed.
 * When every one failed, the session is handed over with the most telling
 * failure (see failure_rank). The connect deadline (p->deadline, from the
 * request) bounds the whole race, as the dialer's budget does.
 */
typedef struct attempt {
  watch_t watch; /* first: the epoll event points here (side WATCH_ATTEMPT) */
  struct race *race;
  int fd;        /* -1: not started, or over */
  int family;    /* 4 or 6 */
  unsigned char addr[16];
} attempt_t;

typedef struct race {
  pair_t *pair;
  struct race *prev, *next; /* in the waiting line while next_at is set; `next` also links retired races */
  int over;      /* ended: an event still in this batch for one of its connects is ignored */
  int count, started, pending;
  int delay_ms;
  int reuse_ms;    /* how long the answer may be remembered (the resolver's reuseMs), 0: not at all */
  int64_t next_at; /* when the next address is tried if none has answered by then, 0: none is waiting */
  int best_errno, best_index, best_local, best_local_port;
  attempt_t attempts[];
} race_t;

/*
 * Relay thread only. The races waiting to try their next address, in the
 * order that is due, so the first is always the next due. Every race waits
 * the same delay (ATTEMPT_DELAY_MS, from JavaScript), so a race that starts
 * waiting joins at the end without a walk over the others, however many
 * connects hang (one with a shorter delay would walk back to its place).
 * And the races over, perhaps still pointed at by this batch's events.
 */
static race_t *waiting_first, *waiting_last, *retired_races;

static void stop_waiting(race_t *r) {
  if (r->next_at == 0) return;
  r->next_at = 0;
  if (r->prev) r->prev->next = r->next;
  else waiting_first = r->next;
  if (r->next) r->next->prev = r->prev;
  else waiting_last = r->prev;
  r->prev = r->next = NULL;
}

static void wait_for_next(race_t *r) {
  stop_waiting(r);
  r->next_at = now_ms() + r->delay_ms;
  race_t *before = waiting_last;
  while (before && before->next_at > r->next_at) before = before->prev;
  r->prev = before;
  r->next = before ? before->next : waiting_first;
  if (r->next) r->next->prev = r;
  else waiting_last = r;
  if (before) before->next = r;
  else waiting_first = r;
}

/* A race for `count` addresses (17 bytes each: the family, 4 or 6, and 16 bytes, an IPv4 address in the first 4). */
static race_t *new_race(const unsigned char *addresses, int count, int delay_ms) {
  race_t *r = calloc(1, sizeof *r + (size_t)count * sizeof(attempt_t));
  if (!r) abort();
  r->count = count;
  r->delay_ms = delay_ms;
  r->best_index = -1;
  for (int i = 0; i < count; i++) {
    attempt_t *a = &r->attempts[i];
    a->watch.side = WATCH_ATTEMPT;
    a->race = r;
    a->fd = -1;
    a->family = addresses[i * 17];
    memcpy(a->addr, addresses + i * 17 + 1, 16);
  }
  return r;
}

/* The order in which connectFirst (src/upstream/dialer.ts) ranks failures: a refusal says the most. */
static int failure_rank(int err) {
  switch (err) {
    case ECONNREFUSED: return 0;
    case ETIMEDOUT: return 1;
    case EHOSTUNREACH: return 2;
    case ENETUNREACH: return 3;
    default: return 4;
  }
}

/* An address failed: kept when it is the most telling failure so far (the first of equals, as a stable sort keeps it). */
static void attempt_failed(race_t *r, attempt_t *a, int err, int local, int local_port) {
  if (r->best_index < 0 || failure_rank(err) < failure_rank(r->best_errno)) {
    r->best_errno = err;
    r->best_index = (int)(a - r->attempts);
    r->best_local = local;
    r->best_local_port = local_port;
  }
}

static void close_attempt(attempt_t *a) {
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, a->fd, NULL);
  close(a->fd);
  a->fd = -1;
}

/* Ends the race (the handshake is being freed, or one address won): closes the connects still running. */
static void end_race(handshake_t *h) {
  race_t *r = h->race;
  if (!r) return;
  h->race = NULL;
  for (int i = 0; i < r->started; i++)
    if (r->attempts[i].fd >= 0) close_attempt(&r->attempts[i]);
  stop_waiting(r);
  r->over = 1;
  r->next = retired_races;
  retired_races = r;
}

static void bury_races(void) {
  while (retired_races) {
    race_t *r = retired_races;
    retired_races = r->next;
    free(r);
  }
}

/* The request in address form, the port the name's: what was connected, for the record. */
static void request_address(pair_t *p, const attempt_t *a) {
  handshake_t *h = p->hs;
  int len = a->family == 4 ? 4 : 16;
  p->request[0] = 5;
  p->request[1] = 1;
  p->request[2] = 0;
  p->request[3] = a->family == 4 ? 1 : 4;
  memcpy(p->request + 4, a->addr, (size_t)len);
  p->request[4 + len] = h->buf[h->request_bytes - 2];
  p->request[5 + len] = h->buf[h->request_bytes - 1];
  p->request_len = 6 + len;
}

/* `a` connected: it becomes the destination socket (`watched`: it is in the epoll set already). */
static void attempt_won(pair_t *p, attempt_t *a, int watched) {
  p->fd[1] = a->fd;
  a->fd = -1; /* not closed with the losers */
  request_address(p, a);
  end_race(p->hs);
  connected(p, watched);
}

/* Starts a connect to `a`: 1 when it connected at once, 0 when it is under way, -1 when it failed (counted). */
static int attempt_connect(pair_t *p, race_t *r, attempt_t *a) {
  handshake_t *h = p->hs;
  int outcome = open_connect(a->family, a->addr, h->buf + h->request_bytes - 2, &a->fd);
  if (outcome == 0) {
    a->watch.pair = p;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &a->watch};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, a->fd, &ev) == 0) return 0;
    outcome = -errno;
  }
  if (outcome > 0) return 1;
  int local = 0, port = 0;
  if (a->fd >= 0) {
    local = wildcard_local(a->fd, &port); /* Node words a failure at once with it (see failed_at_once) */
    close(a->fd);
    a->fd = -1;
  }
  attempt_failed(r, a, -outcome, local, port);
  return -1;
}

/*
 * Every address failed: the session is handed over with the most telling
 * failure, worded with its address. The answer is not remembered any more;
 * and when it was a remembered one, which may be stale, the session is
 * handed over without a failure, to look the name up afresh and dial that.
 */
static void race_lost(pair_t *p) {
  handshake_t *h = p->hs;
  race_t *r = h->race;
  forget_name(h->settings, h->name_tag);
  if (h->reused) {
    hand_over(p, RESUME_REQUEST, 0, 0);
    return;
  }
  h->dial_failed = r->best_index;
  h->dial_local = r->best_local;
  h->dial_local_port = r->best_local_port;
  connect_failed(p, r->best_errno, 0);
}

/* Starts the next address, and the ones after it while each fails at once (connectFirst's startNext). */
static void race_next(pair_t *p) {
  race_t *r = p->hs->race;
  while (r->started < r->count) {
    attempt_t *a = &r->attempts[r->started++];
    if (r->started < r->count) wait_for_next(r);
    else stop_waiting(r);
    int outcome = attempt_connect(p, r, a);
    if (outcome > 0) {
      attempt_won(p, a, 0);
      return;
    }
    if (outcome == 0) {
      r->pending++;
      return;
    }
  }
  if (r->pending == 0) race_lost(p);
}

/* A racing connect finished (an event on its socket). */
static void attempt_event(watch_t *w, uint32_t events) {
  (void)events;
  attempt_t *a = (attempt_t *)w;
  race_t *r = a->race;
  if (r->over || a->fd < 0) return;
  pair_t *p = r->pair;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(a->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err == 0) {
    attempt_won(p, a, 1);
    return;
  }
  close_attempt(a);
  r->pending--;
  attempt_failed(r, a, err, 0, 0);
  race_next(p);
}

/* How long epoll_wait may sleep before a race's next address is due (-1: none is waiting). */
static int race_timeout(void) {
  if (!waiting_first) return -1;
  int64_t left = waiting_first->next_at - now_ms();
  return left > 0 ? (int)left : 0;
}

/* Starts the next address of every race whose current ones did not answer in time. */
static void run_due_races(int64_t now) {
  /* race_next takes the race out of the line (or to its end, with a later next_at): this ends. */
  while (waiting_first && now >= waiting_first->next_at) race_next(waiting_first->pair);
}

/* Remembers JavaScript's answer to a name's request (see named_t); without memory for it, it is asked again next time. */
static void remember_name(settings_t *s, const uint64_t tag[2], const race_t *r, int rule) {
  unsigned char *addresses = malloc((size_t)r->count * 17);
  if (!addresses) return;
  for (int i = 0; i < r->count; i++) {
    addresses[i * 17] = (unsigned char)r->attempts[i].family;
    memcpy(addresses + i * 17 + 1, r->attempts[i].addr, 16);
  }
  named_t *n = &s->names[tag[0] % NAMES_CACHED];
  free(n->addresses);
  n->tag[0] = tag[0];
  n->tag[1] = tag[1];
  n->rule = rule;
  n->count = r->count;
  n->delay_ms = r->delay_ms;
  n->until = now_ms() + r->reuse_ms;
  n->addresses = addresses;
}

/*
 * JavaScript resolved a name and its rules allowed the request (`rule`, -1:
 * no rules), or the relay thread remembered its answer (h->reused): race its
 * addresses (`r`, this thread's from now on). The connect deadline has run
 * since the request.
 */
static void native_dial(pair_t *p, race_t *r, int rule) {
  handshake_t *h = p->hs;
  if (p->phase != PHASE_DECIDE_WAIT || !h->naming) {
    free(r);
    return;
  }
  p->rule = rule;
  p->phase = PHASE_CONNECTING;
  r->pair = p;
  h->race = r;
  if (r->reuse_ms > 0) remember_name(h->settings, h->name_tag, r, rule);
  race_next(p);
}

/*
 * The handshake or connect deadline passed: JavaScript's session ends it with
 * the right record. A connect timeout gets a reply and a linger that reads
 * what the client sent; a handshake timeout is closed at once, with what the
 * client sent while nobody read it still queued unless it is dropped here
 * (see discard_unread).
 */
static void native_expired(pair_t *p) {
  if (p->phase == PHASE_CONNECTING || (p->phase == PHASE_DECIDE_WAIT && p->hs->naming)) {
    if (p->hs->naming) forget_name(p->hs->settings, p->hs->name_tag); /* as race_lost does */
    connect_failed(p, ETIMEDOUT, 1);
    return;
  }
  discard_unread(p->fd[0]);
  hand_over(p, resume_phase(p->phase), 0, 1);
}

static int client_allowed(const settings_t *s, const struct sockaddr_storage *addr) {
  if (s->allow_count < 0) return 1;
  unsigned char bytes[16];
  int family;
  if (addr->ss_family == AF_INET) {
    memcpy(bytes, &((const struct sockaddr_in *)addr)->sin_addr, 4);
    family = 4;
  } else {
    const unsigned char *a6 = (const unsigned char *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a6, mapped, 12) == 0) {
      memcpy(bytes, a6 + 12, 4);
      family = 4;
    } else {
      memcpy(bytes, a6, 16);
      family = 6;
    }
  }
  for (int i = 0; i < s->allow_count; i++) {
    const network_t *net = &s->allow[i];
    if (net->family != family) continue;
    int full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(bytes, net->addr, (size_t)full) != 0) continue;
    if (rest == 0) return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    if ((bytes[full] & mask) == (net->addr[full] & mask)) return 1;
  }
  return 0;
}

/* Writes an IPv4 or IPv6 address as Node spells it into `text` (INET6_ADDRSTRLEN bytes); returns the port. */
static int address_text(const struct sockaddr_storage *addr, char *text, socklen_t size) {
  if (addr->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
    inet_ntop(AF_INET6, &a->sin6_addr, text, size);
    return ntohs(a->sin6_port);
  }
  const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
  inet_ntop(AF_INET, &a->sin_addr, text, size);
  return ntohs(a->sin_port);
}

/* A connection accepted; `s` is a reference to the listener's settings, now
 * the session's. `refusal` (REFUSE_*): closed here at once, and JavaScript
 * records why, as for its own listeners; ADMIT: the handshake begins.
 * `holds_slot`: it took a slot of its client's, given back here when the
 * session ends here, by JavaScript when it was handed over. */
static void open_native(listener_t *l, int fd, const struct sockaddr_storage *addr, settings_t *s, int refusal, int holds_slot) {
  pair_t *p = calloc(1, sizeof *p);
  handshake_t *h = malloc(sizeof *h);
  if (!p || !h) abort();
  h->len = h->eof = h->err = h->msg_len = h->unread = h->full = 0;
  h->dial_local = h->dial_local_port = 0;
  h->request_bytes = h->naming = h->reused = 0;
  h->race = NULL;
  h->dial_failed = -1;
  h->settings = s;
  h->client = *addr;
  p->rule = -1;
  p->id = ++next_native_id;
  p->native = 1;
  p->phase = PHASE_GREETING;
  p->hs = h;
  p->fd[0] = fd;
  p->fd[1] = -1;
  p->idle_ms = s->idle_ms > 0 ? s->idle_ms : 0;
  p->first_eof = -1;
  p->error_side = -1;
  p->method = -1;
  p->refs = 2; /* the relay thread, and JavaScript from MSG_OPEN until MSG_HAND_OVER or MSG_END */
  for (int side = 0; side < 2; side++) {
    p->flow[side].pipe_r = p->flow[side].pipe_w = -1;
    p->watch[side].pair = p;
    p->watch[side].side = side;
  }
  native_accepted++; /* TCP_NODELAY comes from the listening socket (see listen()) */

  message_t *m = message(MSG_OPEN, p, NULL, 0);
  m->n[0] = l->tag;
  m->n[2] = s->generation;
  m->n[3] = refusal; /* refused: no session-open, as for Node's listeners */
  m->n[4] = holds_slot;
  /* What the relay thread saw when it refused at the limit, for the record. */
  m->n[5] = refusal == REFUSE_LIMIT && l->gate ? (double)gate_held(l->gate) : -1;
  m->n[6] = refusal == REFUSE_LIMIT ? borrowed_pipes() : 0;
  if (l->gate && refusal == ADMIT) {
    __atomic_add_fetch(&l->gate->refs, 1, __ATOMIC_ACQ_REL);
    p->gate = l->gate;
    p->slot_held = holds_slot;
    if (holds_slot) client_key(addr, p->slot_key);
  }
  m->listener = l;
  if (l->gate && refusal == ADMIT) __atomic_add_fetch(&l->gate->unreported, 1, __ATOMIC_ACQ_REL); /* a refusal is no session */
  m->n[1] = address_text(addr, m->text, sizeof m->text);
  post(m);

  pthread_mutex_lock(&pairs_lock);
  p->next = pairs;
  if (pairs) pairs->prev = p;
  pairs = p;
  pthread_mutex_unlock(&pairs_lock);
  if (refusal != ADMIT) {
    /* Closed here, not by JavaScript once the batch reaches it: while
     * JavaScript lags, each refused connection would hold a descriptor, and a
     * flood of them ran the process out (accept EMFILE) though the session
     * limit leaves room for the sessions alone. The FIN first, and what the
     * client already sent dropped, so the close is clean (a close with
     * unread bytes is a reset): the client reads an end, as it does from
     * Node's listeners. The hand-over carries no descriptor (-1). */
    shutdown(fd, SHUT_WR);
    discard_unread(fd);
    close(fd);
    p->fd[0] = -1;
    hand_over(p, refusal == REFUSE_LIMIT ? RESUME_LIMIT : refusal == REFUSE_CLIENT_LIMIT ? RESUME_CLIENT_LIMIT : RESUME_DENIED, 0, 0);
    return;
  }
  p->deadline = deadline_after(p, s->handshake_ms);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = &p->watch[0]};
  pthread_mutex_lock(&pairs_lock);
  int rc = epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
  pthread_mutex_unlock(&pairs_lock);
  if (rc < 0) hand_over(p, RESUME_VERSION, 0, 0);
}

/* Out of descriptors: accept with the spare and close at once, so the backlog
 * does not keep the listener ready forever (libuv does the same). Returns
 * whether a connection was shed. */
static int shed_one(listener_t *l) {
  if (l->spare_fd < 0) return 0;
  close(l->spare_fd);
  int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
  if (fd >= 0) close(fd);
  l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return fd >= 0;
}

/* Nothing to shed with (the spare is gone, or its number is past the limit):
 * stop watching the listener for a while rather than spin on a
 * level-triggered readiness that accept cannot clear (pairs_lock held). */
static void pause_listener(listener_t *l) {
  if (l->paused_until != 0) return;
  struct epoll_event ev = {.events = 0, .data.ptr = &l->watch};
  epoll_ctl(epoll_fd, EPOLL_CTL_MOD, l->fd, &ev);
  l->paused_until = now_ms() + ACCEPT_PAUSE_MS;
  l->next_paused = paused_listeners;
  paused_listeners = l;
}

/* Watches paused listeners again once their pause is over; the spare is retried too. */
static void resume_listeners(int64_t now) {
  pthread_mutex_lock(&pairs_lock);
  for (listener_t **at = &paused_listeners; *at;) {
    listener_t *l = *at;
    if (now < l->paused_until) {
      at = &l->next_paused;
      continue;
    }
    *at = l->next_paused;
    l->paused_until = 0;
    if (l->closed) continue;
    if (l->spare_fd < 0) l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->watch};
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, l->fd, &ev);
  }
  pthread_mutex_unlock(&pairs_lock);
}

/* Tells JavaScript of the listener's accept failures counted since it was last told. */
static void tell_failures(listener_t *l, int64_t now) {
  l->failed_told = now;
  if (l->failed_shed == 0 && l->failed_paused == 0) return;
  message_t *m = message(MSG_ACCEPT_FAILED, NULL, NULL, 0);
  m->n[0] = l->tag;
  m->n[1] = l->failed_errno;
  m->n[2] = l->failed_shed;
  m->n[3] = l->failed_paused;
  post(m);
  l->failed_shed = l->failed_paused = 0;
}

/*
 * accept() found no descriptor free: shed the connection with the spare, or
 * pause the listener. JavaScript is told at most once a second per listener,
 * with how many connections were shed and how often the listener paused
 * since it was last told (it logs a listener error, as Node's listeners do);
 * failures inside that second are told when it is over.
 */
static void out_of_descriptors(listener_t *l, int err) {
  if (shed_one(l)) l->failed_shed++;
  else {
    pause_listener(l);
    l->failed_paused++;
  }
  l->failed_errno = err;
  int64_t now = now_ms();
  if (now - l->failed_told >= ACCEPT_FAILED_EVERY_MS) tell_failures(l, now);
  else if (!l->failing) {
    l->failing = 1;
    l->next_failing = failing_listeners;
    failing_listeners = l;
  }
}

/* How long epoll_wait may sleep before a listener's failures are due to be told (-1: none wait). */
static int failures_timeout(void) {
  int64_t now = now_ms(), soonest = -1;
  for (listener_t *l = failing_listeners; l; l = l->next_failing) {
    int64_t left = l->failed_told + ACCEPT_FAILED_EVERY_MS - now;
    if (soonest < 0 || left < soonest) soonest = left > 0 ? left : 0;
  }
  return (int)soonest;
}

/* Tells the failures whose second is over; `closing` (may be NULL) is told now and leaves the list. */
static void tell_due_failures(int64_t now, listener_t *closing) {
  for (listener_t **at = &failing_listeners; *at;) {
    listener_t *l = *at;
    if (l != closing && now - l->failed_told < ACCEPT_FAILED_EVERY_MS) {
      at = &l->next_failing;
      continue;
    }
    *at = l->next_failing;
    l->failing = 0;
    tell_failures(l, now);
  }
}

/*
 * One connection per event: the listener is level-triggered, so another one
 * waiting raises the next epoll_wait at once, and a lone connection (the
 * common case under light load) costs no accept4 that says EAGAIN.
 */
static void native_accept(watch_t *w) {
  listener_t *l = (listener_t *)w;
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    /* Under the lock: unlisten() closes the descriptor from the main thread. */
    pthread_mutex_lock(&pairs_lock);
    if (l->closed) {
      pthread_mutex_unlock(&pairs_lock);
      return;
    }
    int fd = accept4(l->fd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    int err = errno;
    if (fd < 0 && (err == EMFILE || err == ENFILE)) out_of_descriptors(l, err);
    settings_t *settings = l->settings; /* configure() swaps it under the lock */
    int refusal = fd < 0 ? ADMIT : !client_allowed(settings, &addr) ? REFUSE_NOT_ALLOWED : gate_full(l->gate) ? REFUSE_LIMIT : ADMIT;
    int slot = refusal == ADMIT && fd >= 0 ? client_take(l->gate, &addr) : -1;
    if (slot == 0) refusal = REFUSE_CLIENT_LIMIT;
    if (fd >= 0) __atomic_add_fetch(&settings->refs, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_unlock(&pairs_lock);
    if (fd < 0) {
      if (err == EINTR || err == ECONNABORTED) continue;
      return;
    }
    open_native(l, fd, &addr, settings, refusal, slot == 1);
    return;
  }
}

/* After unlisten(): every session it accepted has had its MSG_OPEN queued before this. */
static void forget_listener(void *listener) {
  listener_t *l = listener;
  pthread_mutex_lock(&pairs_lock);
  for (listener_t **at = &paused_listeners; *at; at = &(*at)->next_paused) {
    if (*at == l) {
      *at = l->next_paused; /* it is about to be freed */
      break;
    }
  }
  pthread_mutex_unlock(&pairs_lock);
  if (l->failing) tell_due_failures(now_ms(), l); /* its last failures, before it is gone */
  message_t *m = message(MSG_LISTENER_CLOSED, NULL, NULL, 0);
  m->n[0] = l->tag;
  m->listener = l;
  post(m);
  l->next_dead = dead_listeners;
  dead_listeners = l;
}

static void bury_listeners(void) {
  while (dead_listeners) {
    listener_t *l = dead_listeners;
    dead_listeners = l->next_dead;
    listener_unref(l);
  }
}

/* ---- native handshakes: JavaScript side (main thread) ---- */

/*
 * dispatch(type, id, handle, n0..n9, payload): `handle` (MSG_OPEN only) names
 * the session in answer() and cancel(); payload is the client's address
 * (MSG_OPEN) or a copy of the bytes concerned (MSG_HAND_OVER and MSG_END:
 * after the username, see message_with_user).
 */
static void deliver(napi_env env, napi_value dispatch, message_t *m) {
  pair_t *p = m->p;
  napi_value argv[14], undefined;
  napi_get_undefined(env, &undefined);
  napi_create_int32(env, m->type, &argv[0]);
  napi_create_double(env, p ? p->id : 0, &argv[1]);
  argv[2] = undefined;
  if (m->type == MSG_OPEN) {
    napi_create_external(env, p, NULL, NULL, &argv[2]);
    if (native_refs++ == 0) napi_ref_threadsafe_function(env, on_native);
    session_gate_t *g = m->listener->gate;
    if (g && m->n[3] == ADMIT) {
      /* Moved from one count to the other here, on JavaScript's thread (the
       * session's own tracking sets the same count again), so the relay
       * thread never sees it in neither (one too many admitted) nor, but
       * for these two instructions, in both (one refused below the limit). */
      __atomic_add_fetch(&g->js_sessions, 1, __ATOMIC_RELEASE);
      __atomic_sub_fetch(&g->unreported, 1, __ATOMIC_ACQ_REL);
    }
  }
  for (int i = 0; i < 10; i++) napi_create_double(env, m->n[i], &argv[3 + i]);
  if (m->type == MSG_OPEN) {
    napi_create_string_latin1(env, m->text, NAPI_AUTO_LENGTH, &argv[13]);
  } else {
    void *copy;
    napi_create_buffer_copy(env, (size_t)m->len, m->data, &copy, &argv[13]);
  }
  if (m->type == MSG_END && p && p->ended_untold) {
    /* JavaScript untracks the session in this call: from here its own count
     * says so (one too many for a moment, never one too few). */
    gate_count_ended(p->gate, -1);
    p->ended_untold = 0;
  }
  napi_call_function(env, undefined, dispatch, 14, argv, NULL);
  if (m->type == MSG_HAND_OVER || m->type == MSG_END || m->type == MSG_LISTENER_CLOSED) {
    if (--native_refs == 0) napi_unref_threadsafe_function(env, on_native);
    if (p) unref_pair(p); /* JavaScript's */
    if (m->type == MSG_LISTENER_CLOSED) listener_unref(m->listener);
  }
}

/* Runs on the main thread with a batch of messages, in the order they were queued. */
static void call_native(napi_env env, napi_value dispatch, void *context, void *data) {
  (void)context;
  for (message_t *m = data; m && env != NULL && dispatch != NULL; m = m->next) {
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    deliver(env, dispatch, m);
    napi_close_handle_scope(env, scope);
  }
  free_messages(data);
}

/*
 * The settings buffer JavaScript builds (server/native.ts encodeSettings):
 * method count and bytes, ask-decide, allow count (all ones: anyone), three
 * f64 durations, f64 generation, remember-credentials, key-client-port, then
 * each allowed network as family, prefix and 16 address bytes.
 */
#define SETTINGS_HEADER 48
static settings_t *parse_settings(napi_env env, napi_value value) {
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, value, &data, &len) != napi_ok || len < SETTINGS_HEADER) return NULL;
  const unsigned char *b = data;
  uint32_t allow;
  memcpy(&allow, b + 4, 4);
  int count = allow == 0xffffffffu ? -1 : (int)allow;
  if (count > 0 && len < SETTINGS_HEADER + (size_t)count * 18) return NULL;
  settings_t *s = calloc(1, sizeof *s + (size_t)(count > 0 ? count : 0) * sizeof(network_t));
  if (!s) return NULL;
  s->refs = 1;
  s->method_count = b[0] > 2 ? 2 : b[0];
  s->methods[0] = b[1];
  s->methods[1] = b[2];
  s->ask_decide = b[3];
  double ms[4];
  memcpy(ms, b + 8, sizeof ms);
  s->handshake_ms = (int64_t)ms[0];
  s->connect_ms = (int64_t)ms[1];
  s->idle_ms = (int64_t)ms[2];
  s->generation = ms[3];
  s->remember_credentials = b[40];
  s->key_client_port = b[41];
  s->credentials = calloc(CREDENTIALS_CACHED, sizeof(verdict_t));
  s->decisions = calloc(DECISIONS_CACHED, sizeof(verdict_t));
  s->names = calloc(NAMES_CACHED, sizeof(named_t));
  if (!s->credentials || !s->decisions || !s->names || getrandom(s->key, sizeof s->key, 0) != (ssize_t)sizeof s->key || !username_key_ready()) {
    settings_unref(s);
    return NULL;
  }
  s->allow_count = count;
  for (int i = 0; i < count; i++) {
    const unsigned char *e = b + SETTINGS_HEADER + (size_t)i * 18;
    s->allow[i].family = e[0];
    s->allow[i].prefix = e[1];
    memcpy(s->allow[i].addr, e + 2, 16);
  }
  return s;
}

/* nativeInit(dispatch): once per process. */
static napi_value js_native_init(napi_env env, napi_callback_info info) {
  return init_dispatcher(env, info, "socksgate-native", call_native, &on_native);
}

/* listen(fd, tag, settings, gate) -> handle: accepts on a dup of Node's
 * listening socket from now on. `gate`: sessionGate()'s handle, or null for
 * no session limit. */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], handle;
  int32_t fd;
  double tag;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (on_native == NULL) {
    napi_throw_error(env, NULL, "nativeInit() first");
    return NULL;
  }
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_double(env, argv[1], &tag));
  session_gate_t *gate = NULL;
  napi_valuetype gate_type = napi_undefined;
  if (argc >= 4) CHECK(napi_typeof(env, argv[3], &gate_type));
  if (gate_type == napi_external) CHECK(napi_get_value_external(env, argv[3], (void **)&gate));
  settings_t *s = parse_settings(env, argv[2]);
  listener_t *l = calloc(1, sizeof *l);
  if (!s || !l) {
    if (s) settings_unref(s);
    free(l);
    napi_throw_error(env, NULL, "bad settings");
    return NULL;
  }
  l->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  int one = 1;
  /* Accepted sockets inherit it: no setsockopt per connection. */
  if (l->fd >= 0) setsockopt(l->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  l->tag = tag;
  l->settings = s;
  l->refs = 2;
  if (gate) {
    __atomic_add_fetch(&gate->refs, 1, __ATOMIC_ACQ_REL);
    l->gate = gate;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->watch};
  int err = 0;
  if (l->fd < 0 || fcntl(l->fd, F_SETFL, O_NONBLOCK) < 0) err = errno;
  pthread_mutex_lock(&pairs_lock);
  if (err == 0 && epoll_ctl(epoll_fd, EPOLL_CTL_ADD, l->fd, &ev) < 0) err = errno;
  pthread_mutex_unlock(&pairs_lock);
  if (err != 0) {
    if (l->fd >= 0) close(l->fd);
    if (l->spare_fd >= 0) close(l->spare_fd);
    settings_unref(s);
    gate_unref(l->gate);
    free(l);
    napi_throw_error(env, NULL, strerror(err));
    return NULL;
  }
  CHECK(napi_create_external(env, l, NULL, NULL, &handle));
  if (native_refs++ == 0) napi_ref_threadsafe_function(env, on_native);
  return handle;
}

static void gate_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  gate_unref(data);
}

/* releaseClient(gate, address): a session that took a slot of its client's (MSG_OPEN's n[4]) is over. */
static napi_value js_release_client(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  void *g;
  char text[INET6_ADDRSTRLEN];
  size_t len;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], &g));
  CHECK(napi_get_value_string_latin1(env, argv[1], text, sizeof text, &len));
  struct sockaddr_storage addr = {0};
  struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
  char *scope = strchr(text, '%'); /* a link-local address's zone: not part of the client */
  if (scope) *scope = '\0';
  if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) addr.ss_family = AF_INET;
  else if (inet_pton(AF_INET6, text, &a6->sin6_addr) == 1) addr.ss_family = AF_INET6;
  else return NULL; /* never a session's address: it holds no slot (and a session's end must not throw) */
  client_release(g, &addr);
  return NULL;
}

/*
 * sessionGate() -> [handle, ArrayBuffer]: a server's session_gate_t (see
 * there), no limit yet: the handle for listen(), the buffer for JavaScript
 * to count in. Each holds a reference.
 */
static napi_value js_session_gate(napi_env env, napi_callback_info info) {
  (void)info;
  session_gate_t *g = calloc(1, sizeof *g);
  if (!g) abort();
  g->limit = INT32_MAX;
  g->per_client = INT32_MAX;
  g->refs = 1;
  pthread_mutex_init(&g->clients_lock, NULL);
  if (getrandom(g->clients_key, sizeof g->clients_key, 0) != (ssize_t)sizeof g->clients_key) {
    gate_unref(g);
    napi_throw_error(env, NULL, "cannot share the session count: no random key");
    return NULL;
  }
  g->refs = 2; /* the handle's and the buffer's */
  pthread_mutex_lock(&gates_lock);
  g->next_gate = gates;
  if (gates) gates->prev_gate = g;
  gates = g;
  pthread_mutex_unlock(&gates_lock);
  napi_value result, handle, buffer;
  if (napi_create_external(env, g, gate_finalize, NULL, &handle) != napi_ok) {
    g->refs = 1;
    gate_unref(g);
    napi_throw_error(env, NULL, "cannot share the session count");
    return NULL;
  }
  if (napi_create_external_arraybuffer(env, g, GATE_SHARED_BYTES, gate_finalize, NULL, &buffer) != napi_ok) {
    napi_throw_error(env, NULL, "cannot share the session count"); /* the handle's finalizer frees it */
    gate_unref(g);
    return NULL;
  }
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_set_element(env, result, 0, handle));
  CHECK(napi_set_element(env, result, 1, buffer));
  return result;
}

/* configure(handle, settings): what new sessions on this listener get (reload). */
static napi_value js_configure(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  void *ptr;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], &ptr));
  settings_t *s = parse_settings(env, argv[1]);
  if (!s) {
    napi_throw_error(env, NULL, "bad settings");
    return NULL;
  }
  listener_t *l = ptr;
  pthread_mutex_lock(&pairs_lock);
  settings_t *old = l->settings;
  l->settings = s;
  pthread_mutex_unlock(&pairs_lock);
  settings_unref(old); /* sessions still negotiating keep theirs */
  return NULL;
}

/* unlisten(handle): stops accepting now; connections not yet accepted are refused. Once. */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *ptr;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], &ptr));
  listener_t *l = ptr;
  pthread_mutex_lock(&pairs_lock);
  if (!l->closed) {
    l->closed = 1;
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, l->fd, NULL);
    close(l->fd);
    if (l->spare_fd >= 0) close(l->spare_fd);
  }
  pthread_mutex_unlock(&pairs_lock);
  /* The relay thread may hold an event for it in this batch: it frees it after. */
  send_command_to(CMD_FORGET_LISTENER, NULL, l, -1); /* answered by MSG_LISTENER_CLOSED */
  return NULL;
}

/* The one whole-number argument of a setter, within [min, max]; -1 with a RangeError thrown (`what`) otherwise. */
static int int32_argument(napi_env env, napi_callback_info info, int32_t min, int32_t max, const char *what, int32_t *out) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || napi_get_value_int32(env, argv[0], out) != napi_ok
      || *out < min || *out > max) {
    napi_throw_range_error(env, NULL, what);
    return -1;
  }
  return 0;
}

/* busyPoll(microseconds): how long the relay thread polls before it sleeps; 0 turns it off. */
static napi_value js_busy_poll(napi_env env, napi_callback_info info) {
  int32_t us;
  if (int32_argument(env, info, 0, 1000000, "busyPoll takes 0 to 1000000 microseconds", &us) == 0) {
    __atomic_store_n(&busy_poll_us, us, __ATOMIC_RELAXED);
  }
  return NULL;
}

/* pipeAllowance(pipes): how many pipes the relay thread may hold open besides the sessions' descriptors (-1: no account kept). */
static napi_value js_pipe_allowance(napi_env env, napi_callback_info info) {
  int32_t pipes;
  if (int32_argument(env, info, -1, INT32_MAX, "pipeAllowance takes -1 (none) or a number of pipes", &pipes) == 0) {
    __atomic_store_n(&pipe_allowance, pipes, __ATOMIC_RELAXED);
  }
  return NULL;
}

/* borrowedPipes() -> pipes open past the allowance, each in a session's place (see borrowed_pipes). */
static napi_value js_borrowed_pipes(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  CHECK(napi_create_int32(env, borrowed_pipes(), &result));
  return result;
}

/* siphash(key16, data) -> the 8-byte SipHash-2-4 tag, little-endian: for the reference vectors in the tests. */
static napi_value js_siphash(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  void *key, *data, *out;
  size_t key_len, len;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_buffer_info(env, argv[0], &key, &key_len));
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  if (key_len != 16) {
    napi_throw_error(env, NULL, "a SipHash key is 16 bytes");
    return NULL;
  }
  uint64_t k[2] = {0, 0};
  for (int i = 7; i >= 0; i--) {
    k[0] = (k[0] << 8) | ((unsigned char *)key)[i];
    k[1] = (k[1] << 8) | ((unsigned char *)key)[8 + i];
  }
  uint64_t tag = siphash(k[0], k[1], data, len);
  CHECK(napi_create_buffer(env, 8, &out, &result));
  for (int i = 0; i < 8; i++) ((unsigned char *)out)[i] = (unsigned char)(tag >> (8 * i));
  return result;
}

/* answer(handle, goOn, rememberAs): JavaScript's verdict after MSG_AUTH or MSG_DECIDE (see native_answer). */
static napi_value js_answer(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  void *p;
  bool go_on;
  int32_t remember_as;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], &p));
  CHECK(napi_get_value_bool(env, argv[1], &go_on));
  CHECK(napi_get_value_int32(env, argv[2], &remember_as));
  send_command_to(go_on ? CMD_GO : CMD_HAND_OVER, p, NULL, go_on ? remember_as : -1);
  return NULL;
}

/*
 * dial(handle, addresses, rule, attemptDelayMs, reuseMs): after MSG_DECIDE
 * for a name, the addresses to race (17 bytes each: 4 or 6, then 16 bytes,
 * an IPv4 address in the first 4; at most DIAL_ADDRESSES_MAX), the rule that
 * allowed it (-1: no rules), and how long the same request may be dialled
 * from this answer without asking (0: not at all; see named_t). See
 * native_dial.
 */
#define DIAL_ADDRESSES_MAX 64
static napi_value js_dial(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  void *p;
  int32_t rule, delay_ms, reuse_ms;
  void *data;
  size_t len;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], &p));
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  CHECK(napi_get_value_int32(env, argv[2], &rule));
  CHECK(napi_get_value_int32(env, argv[3], &delay_ms));
  CHECK(napi_get_value_int32(env, argv[4], &reuse_ms));
  const unsigned char *bytes = data;
  int count = (int)(len / 17);
  int valid = len > 0 && len % 17 == 0 && count <= DIAL_ADDRESSES_MAX && delay_ms >= 0 && reuse_ms >= 0;
  for (int i = 0; valid && i < count; i++) valid = bytes[i * 17] == 4 || bytes[i * 17] == 6;
  if (!valid) {
    napi_throw_range_error(env, NULL, "dial: 1 to 64 addresses of 17 bytes (4 or 6, then the address), a delay >= 0 and a reuse >= 0");
    return NULL;
  }
  race_t *r = new_race(bytes, count, delay_ms);
  r->reuse_ms = reuse_ms;
  send_dial_command(p, r, rule);
  return NULL;
}

/*
 * EADDRINUSE when a socket holds address:port: one listening, or one bound
 * for SO_REUSEPORT (another instance's reservation); else 0. The probe sets
 * SO_REUSEADDR, so connections a stopped instance left in TIME_WAIT do not
 * count, and binds without listening, so no client is taken in and dropped.
 */
static int port_taken(const struct sockaddr_storage *addr, socklen_t addr_len) {
  int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, zero = 0, err = 0;
  if (fd < 0) return errno;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0
      || (addr->ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0)
      || bind(fd, (const struct sockaddr *)addr, addr_len) < 0)
    err = errno;
  close(fd);
  return err;
}

/*
 * bindReusePort(address, port, backlog) -> [fd, port], or [-errno, 0]: a TCP
 * socket of this process's own on address:port with SO_REUSEPORT, so that
 * several processes (the CLI's workers) each accept on one port and the
 * kernel spreads connections among them by their addresses, with no wake-up
 * of every process per connection as one shared socket would cost. Listening
 * when backlog >= 0; otherwise only bound, which holds the port (and turns
 * port 0 into a real one) for the processes that bind it after. A listener
 * sets SO_REUSEADDR as libuv does; a reservation must not, or any other
 * process setting it could bind the port too while nothing listens on it
 * (Linux lets two SO_REUSEADDR sockets share a port until one listens). An
 * IPv6 wildcard takes IPv4 too, as Node's listeners do.
 * Only a process of the same user may join a SO_REUSEPORT port, so a
 * reservation first makes sure that no socket holds the port (port_taken):
 * another socksgate's workers, of the same user, would otherwise share it
 * and take part of its connections, under its own settings.
 */
static napi_value js_bind_reuse_port(napi_env env, napi_callback_info info) {
  size_t argc = 3, len;
  napi_value argv[3], result, item;
  char text[INET6_ADDRSTRLEN + 1]; /* one byte more than any address: a longer string is not cut into one */
  int32_t port, backlog;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_string_utf8(env, argv[0], text, sizeof text, &len));
  CHECK(napi_get_value_int32(env, argv[1], &port));
  CHECK(napi_get_value_int32(env, argv[2], &backlog));
  struct sockaddr_storage addr = {0};
  socklen_t addr_len;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
  if (len >= INET6_ADDRSTRLEN) {
    napi_throw_error(env, NULL, "not an IP address");
    return NULL;
  } else if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    addr_len = sizeof *v4;
  } else if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    addr_len = sizeof *v6;
  } else {
    napi_throw_error(env, NULL, "not an IP address");
    return NULL;
  }
  int fd = -1, one = 1, zero = 0;
  int err = backlog < 0 && port != 0 ? port_taken(&addr, addr_len) : 0;
  if (err == 0 && (fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) err = errno;
  else if (err == 0 && ((backlog >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
           || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0
           || (addr.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0)
           || bind(fd, (struct sockaddr *)&addr, addr_len) < 0
           || (backlog >= 0 && listen(fd, backlog) < 0)
           || getsockname(fd, (struct sockaddr *)&addr, &addr_len) < 0))
    err = errno;
  if (err != 0 && fd >= 0) close(fd);
  int bound = addr.ss_family == AF_INET ? ntohs(v4->sin_port) : ntohs(v6->sin6_port);
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_create_int32(env, err != 0 ? -err : fd, &item));
  CHECK(napi_set_element(env, result, 0, item));
  CHECK(napi_create_int32(env, err != 0 ? 0 : bound, &item));
  CHECK(napi_set_element(env, result, 1, item));
  return result;
}

/*
 * peerName(fd) -> [address, port], or null: the peer of a TCP socket, also
 * after a reset closed it. Then getpeername(2), and so Node's remoteAddress,
 * says ENOTCONN, though the kernel keeps the address and SO_PEERNAME still
 * gives it: a connection reset before Node's listener accepted it is
 * recorded with its client's address, as the native handshake (which has it
 * from accept4) records it.
 */
static napi_value js_peer_name(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result, item;
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  struct sockaddr_storage addr;
  socklen_t len = sizeof addr;
  int known = getsockname(fd, (struct sockaddr *)&addr, &len) == 0 && (addr.ss_family == AF_INET || addr.ss_family == AF_INET6);
  if (known) {
    /* SO_PEERNAME refuses (EINVAL) a buffer longer than the address: size it by the socket's own family. */
    len = addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    known = getsockopt(fd, SOL_SOCKET, SO_PEERNAME, &addr, &len) == 0;
  }
  if (!known) {
    CHECK(napi_get_null(env, &result));
    return result;
  }
  char text[INET6_ADDRSTRLEN];
  int port = address_text(&addr, text, sizeof text);
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &item));
  CHECK(napi_set_element(env, result, 0, item));
  CHECK(napi_create_int32(env, port, &item));
  CHECK(napi_set_element(env, result, 1, item));
  return result;
}

/* What the JavaScript side checks before it uses the addon (ADDON_INTERFACE in
 * src/relay/splice.ts): raise both together whenever an export, an argument
 * or a message's layout changes, so a stale build (an old file named by
 * SOCKSGATE_SPLICE_ADDON, a build/ left from another checkout) is refused
 * with a reason instead of misread. */
#define ADDON_INTERFACE 15

NAPI_MODULE_INIT() {
  napi_value interface_version;
  if (napi_create_int32(env, ADDON_INTERFACE, &interface_version) != napi_ok) return NULL;
  napi_property_descriptor props[] = {
      {"interfaceVersion", NULL, NULL, NULL, NULL, interface_version, napi_enumerable, NULL},
      {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},
      {"start", NULL, js_start, NULL, NULL, NULL, napi_default, NULL},
      {"cancel", NULL, js_cancel, NULL, NULL, NULL, napi_default, NULL},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default, NULL},
      {"nativeInit", NULL, js_native_init, NULL, NULL, NULL, napi_default, NULL},
      {"listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL},
      {"sessionGate", NULL, js_session_gate, NULL, NULL, NULL, napi_default, NULL},
      {"releaseClient", NULL, js_release_client, NULL, NULL, NULL, napi_default, NULL},
      {"configure", NULL, js_configure, NULL, NULL, NULL, napi_default, NULL},
      {"unlisten", NULL, js_unlisten, NULL, NULL, NULL, napi_default, NULL},
      {"answer", NULL, js_answer, NULL, NULL, NULL, napi_default, NULL},
      {"dial", NULL, js_dial, NULL, NULL, NULL, napi_default, NULL},
      {"siphash", NULL, js_siphash, NULL, NULL, NULL, napi_default, NULL},
      {"busyPoll", NULL, js_busy_poll, NULL, NULL, NULL, napi_default, NULL},
      {"pipeAllowance", NULL, js_pipe_allowance, NULL, NULL, NULL, napi_default, NULL},
      {"borrowedPipes", NULL, js_borrowed_pipes, NULL, NULL, NULL, napi_default, NULL},
      {"bindReusePort", NULL, js_bind_reuse_port, NULL, NULL, NULL, napi_default, NULL},
      {"peerName", NULL, js_peer_name, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  if (udp_define(env, exports) != napi_ok) return NULL;
  return exports;
}

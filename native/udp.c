/*
 * Native UDP associations (RFC 1928 §7) on the relay thread: the client-facing
 * socket and the outbound ones (one per family, opened on first use) are
 * read with recvmmsg and written with sendmmsg, so a datagram costs no
 * JavaScript at all in the common case.
 *
 * The relay thread sends on what it can decide alone: a datagram from the
 * client (its address, and its port once known) whose header names an
 * address literal with FRAG 0, and every reply, which it wraps in a header
 * naming the sender. Everything else from the client (a destination name, a
 * fragment, a malformed header) is handed to JavaScript, which keeps the
 * resolver, the name cache and the counting of what it drops, and sends with
 * udpSend() (server/native-udp.ts).
 *
 * When the request rules look at UDP destinations, an association is opened
 * "checked": it keeps a small table of verdicts by address and port, filled
 * by JavaScript, which alone knows the rules. A datagram to (or a reply from)
 * an address the table knows is sent or dropped here; one it does not know
 * goes to JavaScript, which decides it, sends it, and tells the table.
 *
 * The relay thread holds an association's lock while it reads or writes its
 * sockets; udpClose() takes it to close them, so a descriptor is never used
 * after it was closed. Bounded: a batch of slots for the relay thread, and at
 * most TO_JS_MAX datagrams per association on their way to JavaScript; near
 * that, the relay thread stops reading the association's sockets until
 * JavaScript catches up, so the kernel's buffers hold the rest.
 *
 * Order: while a datagram of one direction is on its way to JavaScript, the
 * rest of that direction follows it there, so a datagram the table learns to
 * decide in the meantime cannot overtake the ones before it.
 */
#define _GNU_SOURCE
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32
/* Larger than any UDP payload (65507 over IPv4, 65527 over IPv6): a reply is never cut. */
#define SLOT 65536
#define TO_JS_MAX 128
#define TO_JS_RESUME BATCH /* reading resumes at or below this many on their way */
#define CLIENT_RECEIVE_BUFFER (1 << 20)
#define HEADER_MAX 22

enum { CLIENT_SIDE = 0, OUT4 = 1, OUT6 = 2, SOCKETS = 3 };
enum { UP, DOWN, BYTES_UP, BYTES_DOWN, FOREIGN, INVALID, DENIED, COUNTERS };
/* What a datagram handed to JavaScript is: a client's (as received), or a reply (header and payload, as the client would get it). */
enum { TO_JS_CLIENT = 0, TO_JS_REPLY = 1 };

/* Verdicts of a checked association: VERDICT_SETS sets of VERDICT_WAYS, the least recently used replaced. */
#define VERDICT_SETS 64
#define VERDICT_WAYS 4

typedef struct {
  uint32_t used; /* the association's tick at the last lookup; 0: empty */
  uint16_t port; /* network order */
  uint8_t family;
  uint8_t allowed;
  unsigned char addr[16];
} verdict_t;

typedef struct udp udp_t;

typedef struct {
  watch_t base; /* pair NULL, side WATCH_UDP */
  udp_t *u;
  int which;
} udp_watch_t;

struct udp {
  pthread_mutex_t lock;
  double id;
  int fd[SOCKETS]; /* -1: not open (outbound) or closed */
  udp_watch_t watch[SOCKETS];
  int closed;
  int refs;           /* JavaScript's handle, the relay thread's, each datagram on its way to JavaScript */
  int client_family;  /* AF_INET or AF_INET6, IPv4-mapped addresses taken as AF_INET */
  unsigned char client[16];
  uint16_t client_port; /* network order; 0 until the first datagram names it */
  int max_datagram;
  int max_to_client;
  int to_js[2]; /* by kind: datagrams on their way to JavaScript */
  int paused;   /* bit per socket: not read until JavaScript catches up */
  verdict_t *verdicts; /* NULL: not checked, every datagram is relayed */
  uint32_t tick;
  uint64_t count[COUNTERS];
  int outbound_errno; /* why an outbound socket first could not be opened, for the access line; 0: never */
  int64_t last_active;
  udp_t *next_closed;
};

typedef struct {
  udp_t *u;
  int kind; /* TO_JS_CLIENT or TO_JS_REPLY */
  int port; /* the client's source port (TO_JS_CLIENT) */
  size_t len;
  unsigned char data[];
} to_js_t;

uint64_t udp_native_datagrams, udp_handed_to_js; /* a torn read only blurs a counter */
static int epfd = -1;
static napi_threadsafe_function on_udp;
static pthread_mutex_t closed_lock = PTHREAD_MUTEX_INITIALIZER;
static udp_t *closed_list; /* closed by JavaScript, freed by the relay thread before its next wait */

/* Relay-thread buffers: pages of the slots are touched only by datagrams that big. */
static unsigned char *slots;
static struct mmsghdr in[BATCH], out4[BATCH], out6[BATCH];
static struct iovec in_iov[BATCH], out_iov[BATCH][2];
static struct sockaddr_storage from[BATCH], to[BATCH];
static unsigned char headers[BATCH][HEADER_MAX];

static int64_t clock_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void udp_unref(udp_t *u) {
  if (__atomic_sub_fetch(&u->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  pthread_mutex_destroy(&u->lock);
  free(u->verdicts);
  free(u);
}

/* The family, address bytes and port of a socket address, IPv4-mapped IPv6 as IPv4. */
static int split_address(const struct sockaddr_storage *s, const unsigned char **addr, uint16_t *port) {
  if (s->ss_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)s;
    *addr = (const unsigned char *)&v4->sin_addr;
    *port = v4->sin_port;
    return AF_INET;
  }
  const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)s;
  *port = v6->sin6_port;
  if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
    *addr = v6->sin6_addr.s6_addr + 12;
    return AF_INET;
  }
  *addr = v6->sin6_addr.s6_addr;
  return AF_INET6;
}

/* Whether a datagram from `s` is the client's: its address, and its port once known (lock held). */
static int is_client(const udp_t *u, const struct sockaddr_storage *s, uint16_t *port) {
  const unsigned char *addr;
  int family = split_address(s, &addr, port);
  if (family != u->client_family || memcmp(addr, u->client, family == AF_INET ? 4 : 16) != 0) return 0;
  return u->client_port == 0 || *port == u->client_port;
}

/* The association's clock for least-recently-used replacement; never 0, which marks an empty slot. */
static uint32_t next_tick(udp_t *u) {
  if (++u->tick == 0) u->tick = 1;
  return u->tick;
}

static verdict_t *verdict_set(udp_t *u, int family, const unsigned char *addr, uint16_t port) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (int i = 0; i < (family == AF_INET ? 4 : 16); i++) h = (h ^ addr[i]) * 16777619u;
  h = (h ^ port) * 16777619u;
  return u->verdicts + (h % VERDICT_SETS) * VERDICT_WAYS;
}

static int same_endpoint(const verdict_t *v, int family, const unsigned char *addr, uint16_t port) {
  return v->used != 0 && v->family == family && v->port == port && memcmp(v->addr, addr, family == AF_INET ? 4 : 16) == 0;
}

/* The table's verdict on an address and port (lock held): 1 allowed, 0 denied, -1 not known. */
static int verdict_of(udp_t *u, int family, const unsigned char *addr, uint16_t port) {
  verdict_t *set = verdict_set(u, family, addr, port);
  for (int i = 0; i < VERDICT_WAYS; i++) {
    if (!same_endpoint(&set[i], family, addr, port)) continue;
    set[i].used = next_tick(u);
    return set[i].allowed;
  }
  return -1;
}

/* Records JavaScript's verdict (lock held), replacing the set's least recently used. */
static void remember_verdict(udp_t *u, int family, const unsigned char *addr, uint16_t port, int allowed) {
  verdict_t *set = verdict_set(u, family, addr, port), *slot = &set[0];
  for (int i = 0; i < VERDICT_WAYS; i++) {
    if (same_endpoint(&set[i], family, addr, port)) {
      slot = &set[i];
      break;
    }
    if (set[i].used < slot->used) slot = &set[i];
  }
  slot->used = next_tick(u);
  slot->family = (uint8_t)family;
  slot->port = port;
  slot->allowed = (uint8_t)(allowed != 0);
  memcpy(slot->addr, addr, family == AF_INET ? 4 : 16);
}

/* The verdict on a socket address (an IPv4-mapped one as IPv4); -1 when unknown. */
static int verdict_for(udp_t *u, const struct sockaddr_storage *s) {
  const unsigned char *addr;
  uint16_t port;
  int family = split_address(s, &addr, &port);
  return verdict_of(u, family, addr, port);
}

/* A socket address for an IPv4 (4 bytes) or IPv6 (16) address; returns its length. */
static socklen_t make_address(struct sockaddr_storage *s, int family, const unsigned char *addr, uint16_t port) {
  memset(s, 0, sizeof *s);
  if (family == AF_INET) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)s;
    v4->sin_family = AF_INET;
    memcpy(&v4->sin_addr, addr, 4);
    v4->sin_port = port;
    return sizeof *v4;
  }
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)s;
  v6->sin6_family = AF_INET6;
  memcpy(&v6->sin6_addr, addr, 16);
  v6->sin6_port = port;
  return sizeof *v6;
}

/* Whether a header's address literal is 0.0.0.0, ::, or ::ffff:0.0.0.0 (only the length is trusted, not checked further). */
static int unspecified_destination(const unsigned char *d, size_t len) {
  static const unsigned char zeros[16] = {0};
  if (d[3] == 1) return len >= 10 && memcmp(d + 4, zeros, 4) == 0;
  if (d[3] != 4 || len < 22 || memcmp(d + 4, zeros, 10) != 0 || memcmp(d + 16, zeros, 4) != 0) return 0;
  return (d[14] == 0 && d[15] == 0) || (d[14] == 0xff && d[15] == 0xff);
}

/*
 * Where a client's datagram goes when the relay thread can send it itself:
 * RSV 0, FRAG 0 and an address literal (an IPv4-mapped IPv6 one goes out over
 * IPv4, the IPv6 socket being v6-only). Returns the header's length, or 0:
 * JavaScript decides.
 */
static int literal_destination(const unsigned char *d, size_t len, struct sockaddr_storage *dest, socklen_t *dest_len, int *which) {
  if (len < 4 || d[0] != 0 || d[1] != 0 || d[2] != 0) return 0;
  /* The unspecified address reaches this host: JavaScript drops it, counted. */
  if (unspecified_destination(d, len)) return 0;
  uint16_t port;
  if (d[3] == 1 && len >= 10) {
    memcpy(&port, d + 8, 2);
    *dest_len = make_address(dest, AF_INET, d + 4, port);
    *which = OUT4;
    return 10;
  }
  if (d[3] == 4 && len >= 22) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    int v4 = memcmp(d + 4, mapped, 12) == 0;
    memcpy(&port, d + 20, 2);
    *dest_len = v4 ? make_address(dest, AF_INET, d + 16, port) : make_address(dest, AF_INET6, d + 4, port);
    *which = v4 ? OUT4 : OUT6;
    return 22;
  }
  return 0;
}

/* The reply header naming the sender: ATYP 1 or 4, its address and port. Returns its length. */
static int reply_header(unsigned char *h, const struct sockaddr_storage *sender) {
  const unsigned char *addr;
  uint16_t port;
  int family = split_address(sender, &addr, &port);
  int len = family == AF_INET ? 4 : 16;
  h[0] = h[1] = h[2] = 0;
  h[3] = family == AF_INET ? 1 : 4;
  memcpy(h + 4, addr, (size_t)len);
  memcpy(h + 4 + len, &port, 2);
  return 6 + len;
}

static int watch_socket(udp_t *u, int which, int fd) {
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &u->watch[which].base};
  return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* No outbound socket (lock held): the first cause is kept for the access line, once, not per datagram. */
static int outbound_failed(udp_t *u, int err) {
  if (u->outbound_errno == 0) u->outbound_errno = err;
  return -1;
}

/* The outbound socket of a family, opened and watched on first use (lock held); -1 if it cannot be
 * (out of descriptors, say): the datagram is dropped, and the next one tries again. */
static int outbound(udp_t *u, int which) {
  if (u->fd[which] >= 0) return u->fd[which];
  int family = which == OUT4 ? AF_INET : AF_INET6, one = 1;
  int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return outbound_failed(u, errno);
  if ((family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) || watch_socket(u, which, fd) < 0) {
    int err = errno;
    close(fd);
    return outbound_failed(u, err);
  }
  u->fd[which] = fd;
  return fd;
}

/* Sends a batch in order; a datagram the kernel refuses (a full buffer, too large) is dropped and counted. */
static void send_batch(udp_t *u, int fd, struct mmsghdr *m, int count, int payload_iov, int dir) {
  int done = 0;
  while (done < count) {
    int sent = sendmmsg(fd, m + done, (unsigned)(count - done), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      u->count[INVALID]++;
      done++;
      continue;
    }
    udp_native_datagrams += (uint64_t)sent;
    for (int k = done; k < done + sent; k++) {
      u->count[dir]++;
      u->count[dir + 2] += m[k].msg_hdr.msg_iov[payload_iov].iov_len;
    }
    done += sent;
  }
}

static int receive(int fd) {
  for (int i = 0; i < BATCH; i++) {
    in_iov[i].iov_base = slots + (size_t)i * SLOT;
    in_iov[i].iov_len = SLOT;
    in[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &in_iov[i], .msg_iovlen = 1};
  }
  int n;
  do n = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
  while (n < 0 && errno == EINTR);
  return n;
}

/* Queues a datagram for JavaScript: `head` (may be empty) then `d`. Dropped and counted past TO_JS_MAX. */
static void deliver_later(udp_t *u, int kind, const unsigned char *head, size_t head_len, const unsigned char *d, size_t len, uint16_t port) {
  to_js_t *m = u->to_js[0] + u->to_js[1] < TO_JS_MAX ? malloc(sizeof *m + head_len + len) : NULL;
  if (!m) {
    u->count[INVALID]++;
    return;
  }
  m->u = u;
  m->kind = kind;
  m->port = ntohs(port);
  m->len = head_len + len;
  if (head_len > 0) memcpy(m->data, head, head_len);
  memcpy(m->data + head_len, d, len);
  __atomic_add_fetch(&u->refs, 1, __ATOMIC_ACQ_REL);
  u->to_js[kind]++;
  udp_handed_to_js++;
  if (napi_call_threadsafe_function(on_udp, m, napi_tsfn_nonblocking) != napi_ok) {
    u->to_js[kind]--;
    __atomic_sub_fetch(&u->refs, 1, __ATOMIC_ACQ_REL); /* not the last: JavaScript's handle holds one */
    free(m);
    u->count[INVALID]++;
  }
}

static void add_out(struct mmsghdr *m, int k, struct sockaddr_storage *dest, socklen_t dest_len, struct iovec *iov, int iovlen) {
  m[k].msg_hdr = (struct msghdr){.msg_name = dest, .msg_namelen = dest_len, .msg_iov = iov, .msg_iovlen = (size_t)iovlen};
}

/*
 * Whether a socket may be read now (lock held): not while a whole batch could
 * overflow what is on its way to JavaScript. Then it is left out of the wait
 * (level-triggered, it would wake the thread for nothing) until deliver()
 * sees JavaScript catch up.
 */
static int may_read(udp_t *u, int which) {
  if (u->to_js[0] + u->to_js[1] <= TO_JS_MAX - BATCH) return 1;
  struct epoll_event ev = {.events = 0, .data.ptr = &u->watch[which].base};
  epoll_ctl(epfd, EPOLL_CTL_MOD, u->fd[which], &ev);
  u->paused |= 1 << which;
  return 0;
}

/* Reading resumes on every paused socket (lock held). */
static void resume_reading(udp_t *u) {
  for (int i = 0; i < SOCKETS; i++) {
    if (!(u->paused & (1 << i)) || u->fd[i] < 0) continue;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &u->watch[i].base};
    epoll_ctl(epfd, EPOLL_CTL_MOD, u->fd[i], &ev);
  }
  u->paused = 0;
}

/* Client → destinations (lock held). */
static void from_client(udp_t *u) {
  if (!may_read(u, CLIENT_SIDE)) return;
  int n = receive(u->fd[CLIENT_SIDE]);
  int n4 = 0, n6 = 0;
  int heard = 0; /* a datagram from the client that decodes: the association is in use (as on the stream relay) */
  for (int i = 0; i < n; i++) {
    size_t len = in[i].msg_len;
    unsigned char *d = in_iov[i].iov_base;
    uint16_t port;
    if (!is_client(u, &from[i], &port)) {
      u->count[FOREIGN]++;
      continue;
    }
    if ((in[i].msg_hdr.msg_flags & MSG_TRUNC) || len > (size_t)u->max_datagram) {
      u->count[INVALID]++;
      continue;
    }
    socklen_t dest_len;
    int which;
    int header = literal_destination(d, len, &to[i], &dest_len, &which);
    /* A datagram ahead of it is with JavaScript (a name, an address to
     * decide, the first one): it follows, so that order holds as on the
     * stream relay, and, while the port is not known, so that JavaScript,
     * which learns it from the first datagram that decodes, can judge this one. */
    int behind_js = u->to_js[TO_JS_CLIENT] > 0;
    int verdict = header == 0 ? 1 : behind_js ? -1 : !u->verdicts ? 1 : verdict_for(u, &to[i]);
    if (header == 0 || verdict < 0) {
      deliver_later(u, TO_JS_CLIENT, NULL, 0, d, len, port);
      continue;
    }
    if (u->client_port == 0) u->client_port = port;
    heard = 1;
    if (verdict == 0) {
      u->count[DENIED]++;
      continue;
    }
    if (outbound(u, which) < 0) {
      u->count[INVALID]++;
      continue;
    }
    out_iov[i][0] = (struct iovec){.iov_base = d + header, .iov_len = len - (size_t)header};
    if (which == OUT4) add_out(out4, n4++, &to[i], dest_len, out_iov[i], 1);
    else add_out(out6, n6++, &to[i], dest_len, out_iov[i], 1);
  }
  if (n4 > 0) send_batch(u, u->fd[OUT4], out4, n4, 0, UP);
  if (n6 > 0) send_batch(u, u->fd[OUT6], out6, n6, 0, UP);
  if (heard) u->last_active = clock_ms();
}

/* Destinations → client, each payload behind a header naming its sender (lock held). */
static void from_destination(udp_t *u, int which) {
  if (!may_read(u, which)) return;
  int n = receive(u->fd[which]);
  if (n <= 0 || u->client_port == 0) return; /* no client to send to yet: nothing is relayed */
  struct sockaddr_storage client;
  socklen_t client_len = make_address(&client, u->client_family, u->client, u->client_port);
  int k = 0;
  for (int i = 0; i < n; i++) {
    size_t len = in[i].msg_len;
    int header = reply_header(headers[i], &from[i]);
    if (len + (size_t)header > (size_t)u->max_to_client) {
      u->count[INVALID]++; /* the header makes it too large for one datagram */
      continue;
    }
    int verdict = !u->verdicts ? 1 : u->to_js[TO_JS_REPLY] > 0 ? -1 : verdict_for(u, &from[i]);
    if (verdict < 0) {
      deliver_later(u, TO_JS_REPLY, headers[i], (size_t)header, in_iov[i].iov_base, len, 0);
      continue;
    }
    if (verdict == 0) {
      u->count[DENIED]++;
      continue;
    }
    out_iov[i][0] = (struct iovec){.iov_base = headers[i], .iov_len = (size_t)header};
    out_iov[i][1] = (struct iovec){.iov_base = in_iov[i].iov_base, .iov_len = len};
    add_out(out4, k++, &client, client_len, out_iov[i], 2);
  }
  if (k == 0) return;
  send_batch(u, u->fd[CLIENT_SIDE], out4, k, 1, DOWN);
  u->last_active = clock_ms();
}

void udp_event(watch_t *w, uint32_t events) {
  (void)events;
  udp_watch_t *uw = (udp_watch_t *)w;
  udp_t *u = uw->u;
  if (!slots && !(slots = malloc((size_t)BATCH * SLOT))) return; /* retried at the next event (level-triggered) */
  pthread_mutex_lock(&u->lock);
  if (!u->closed) {
    if (uw->which == CLIENT_SIDE) from_client(u);
    else from_destination(u, uw->which);
  }
  pthread_mutex_unlock(&u->lock);
}

void udp_before_wait(void) {
  pthread_mutex_lock(&closed_lock);
  udp_t *u = closed_list;
  closed_list = NULL;
  pthread_mutex_unlock(&closed_lock);
  while (u) {
    udp_t *next = u->next_closed;
    udp_unref(u);
    u = next;
  }
}

/* ---- JavaScript side (main thread) ---- */

/* Runs on the main thread: dispatch(id, kind, clientPort, datagram) for a datagram the relay thread left to JavaScript. */
static void deliver(napi_env env, napi_value dispatch, void *context, void *data) {
  (void)context;
  to_js_t *m = data;
  udp_t *u = m->u;
  pthread_mutex_lock(&u->lock);
  int closed = u->closed;
  pthread_mutex_unlock(&u->lock);
  if (env != NULL && dispatch != NULL && !closed) {
    napi_value argv[4], undefined;
    void *copy;
    napi_get_undefined(env, &undefined);
    napi_create_double(env, u->id, &argv[0]);
    napi_create_int32(env, m->kind, &argv[1]);
    napi_create_int32(env, m->port, &argv[2]);
    napi_create_buffer_copy(env, m->len, m->data, &copy, &argv[3]);
    napi_call_function(env, undefined, dispatch, 4, argv, NULL);
  }
  /* Counted down only now: until JavaScript has sent or dropped it, the datagrams after it follow it. */
  pthread_mutex_lock(&u->lock);
  u->to_js[m->kind]--;
  if (u->paused && !u->closed && u->to_js[0] + u->to_js[1] <= TO_JS_RESUME) resume_reading(u);
  pthread_mutex_unlock(&u->lock);
  free(m);
  udp_unref(u);
}

/* udpInit(dispatch): once per process. */
static napi_value js_udp_init(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (on_udp != NULL) {
    napi_throw_error(env, NULL, "already initialised");
    return NULL;
  }
  int err = relay_thread_ready(&epfd);
  if (err != 0) {
    napi_throw_error(env, NULL, strerror(err));
    return NULL;
  }
  CHECK(napi_create_string_utf8(env, "socksgate-udp", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, deliver, &on_udp));
  CHECK(napi_unref_threadsafe_function(env, on_udp)); /* the control connection keeps the process alive, not this */
  return NULL;
}

/* An IP address from JavaScript: its family, and its bytes (an IPv4-mapped one as IPv4); 0 if it is none. */
static int parse_ip(napi_env env, napi_value value, unsigned char out[16]) {
  char text[INET6_ADDRSTRLEN];
  size_t len;
  if (napi_get_value_string_latin1(env, value, text, sizeof text, &len) != napi_ok || len >= sizeof text - 1) return 0;
  if (inet_pton(AF_INET, text, out) == 1) return AF_INET;
  if (inet_pton(AF_INET6, text, out) != 1) return 0;
  if (IN6_IS_ADDR_V4MAPPED((struct in6_addr *)out)) {
    memmove(out, out + 12, 4);
    return AF_INET;
  }
  return AF_INET6;
}

static void finalize_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  udp_unref(data);
}

/* A bound, watched client-facing socket on `bind`: its descriptor, or -errno. */
static int open_client_side(udp_t *u, int family, const unsigned char *bind_addr, int *port) {
  struct sockaddr_storage addr;
  socklen_t len = make_address(&addr, family, bind_addr, 0);
  int size = CLIENT_RECEIVE_BUFFER;
  int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size); /* best effort, as dgram's recvBufferSize */
  if (bind(fd, (struct sockaddr *)&addr, len) < 0 || getsockname(fd, (struct sockaddr *)&addr, &len) < 0
      || watch_socket(u, CLIENT_SIDE, fd) < 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  const unsigned char *ignored;
  uint16_t bound;
  split_address(&addr, &ignored, &bound);
  *port = ntohs(bound);
  return fd;
}

/*
 * udpOpen(id, bindAddress, clientAddress, clientPort, maxDatagram, checked) -> [handle, port],
 * or [null, -errno] when the socket cannot be opened. `checked`: each datagram's
 * destination (a reply's sender) needs a verdict (udpVerdict, udpSend).
 */
static napi_value js_udp_open(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], result, handle, item;
  double id;
  int32_t client_port, max_datagram;
  bool checked;
  unsigned char bind_addr[16], client[16];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_double(env, argv[0], &id));
  int bind_family = parse_ip(env, argv[1], bind_addr);
  int client_family = parse_ip(env, argv[2], client);
  CHECK(napi_get_value_int32(env, argv[3], &client_port));
  CHECK(napi_get_value_int32(env, argv[4], &max_datagram));
  CHECK(napi_get_value_bool(env, argv[5], &checked));
  if (on_udp == NULL || bind_family == 0 || client_family == 0) {
    napi_throw_error(env, NULL, on_udp == NULL ? "udpInit() first" : "not an IP address");
    return NULL;
  }
  udp_t *u = calloc(1, sizeof *u);
  if (!u) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  if (checked && !(u->verdicts = calloc(VERDICT_SETS * VERDICT_WAYS, sizeof(verdict_t)))) {
    free(u);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&u->lock, NULL);
  u->id = id;
  u->refs = 2; /* JavaScript's handle, and the relay thread's until udpClose() */
  u->client_family = client_family;
  memcpy(u->client, client, 16);
  u->client_port = htons((uint16_t)client_port);
  u->max_datagram = max_datagram;
  u->max_to_client = bind_family == AF_INET ? 65507 : 65527;
  u->last_active = clock_ms();
  for (int i = 0; i < SOCKETS; i++) {
    u->fd[i] = -1;
    u->watch[i] = (udp_watch_t){.base = {.pair = NULL, .side = WATCH_UDP}, .u = u, .which = i};
  }
  int port = 0;
  int fd = open_client_side(u, bind_family, bind_addr, &port);
  CHECK(napi_create_array_with_length(env, 2, &result));
  if (fd < 0) {
    pthread_mutex_destroy(&u->lock);
    free(u->verdicts);
    free(u);
    CHECK(napi_get_null(env, &handle));
    CHECK(napi_create_int32(env, fd, &item));
  } else {
    u->fd[CLIENT_SIDE] = fd;
    CHECK(napi_create_external(env, u, finalize_handle, NULL, &handle));
    CHECK(napi_create_int32(env, port, &item));
  }
  CHECK(napi_set_element(env, result, 0, handle));
  CHECK(napi_set_element(env, result, 1, item));
  return result;
}

static udp_t *handle_of(napi_env env, napi_value value) {
  void *u = NULL;
  if (napi_get_value_external(env, value, &u) != napi_ok) napi_throw_type_error(env, NULL, "not a UDP association");
  return u;
}

/* The association a call's one argument names (NULL, with an exception pending, if none). */
static udp_t *sole_handle(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, NULL, "a UDP association handle is required");
    return NULL;
  }
  return handle_of(env, argv[0]);
}

/* A call's association, address and port (argv 0-2); NULL, with an exception pending, if it names none. *family 0: not an IP address. */
static udp_t *endpoint_args(napi_env env, napi_value *argv, int *family, unsigned char addr[16], uint16_t *port) {
  int32_t value;
  udp_t *u = handle_of(env, argv[0]);
  if (!u) return NULL;
  *family = parse_ip(env, argv[1], addr);
  if (napi_get_value_int32(env, argv[2], &value) != napi_ok) {
    napi_throw_type_error(env, NULL, "a port is required");
    return NULL;
  }
  *port = htons((uint16_t)value);
  return u;
}

/*
 * udpSend(handle, address, port, payload, clientPort): a datagram JavaScript
 * decided (a name it resolved), from the client's `clientPort`; counted like
 * the relay thread's own, sent or dropped. A checked association remembers
 * the address and port as allowed, both ways.
 */
static napi_value js_udp_send(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int32_t from_port;
  void *payload;
  size_t len;
  unsigned char addr[16];
  int family;
  uint16_t port;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_t *u = endpoint_args(env, argv, &family, addr, &port);
  if (!u) return NULL;
  CHECK(napi_get_buffer_info(env, argv[3], &payload, &len));
  CHECK(napi_get_value_int32(env, argv[4], &from_port));
  pthread_mutex_lock(&u->lock);
  uint16_t client_port = htons((uint16_t)from_port);
  if (u->closed) {
    /* nothing: the association is gone */
  } else if (u->client_port != 0 && u->client_port != client_port) {
    u->count[FOREIGN]++; /* the port was learned from another datagram meanwhile */
  } else {
    u->client_port = client_port;
    if (family && u->verdicts) remember_verdict(u, family, addr, port, 1);
    struct sockaddr_storage dest;
    socklen_t dest_len = family ? make_address(&dest, family, addr, port) : 0;
    int fd = family ? outbound(u, family == AF_INET ? OUT4 : OUT6) : -1;
    int sent = fd >= 0 && sendto(fd, payload, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&dest, dest_len) >= 0;
    if (sent) {
      u->count[UP]++;
      u->count[BYTES_UP] += len;
      u->last_active = clock_ms();
    } else {
      u->count[INVALID]++;
    }
  }
  pthread_mutex_unlock(&u->lock);
  return NULL;
}

/*
 * udpClientPort(handle, port) -> whether `port` is the client's: a datagram
 * JavaScript decoded came from it. The first one to decode sets the port
 * when the request gave none; the relay thread then drops the others itself.
 */
static napi_value js_udp_client_port(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t port;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_t *u = handle_of(env, argv[0]);
  if (!u) return NULL;
  CHECK(napi_get_value_int32(env, argv[1], &port));
  uint16_t client_port = htons((uint16_t)port);
  pthread_mutex_lock(&u->lock);
  if (u->client_port == 0 && !u->closed) u->client_port = client_port;
  int ours = u->client_port == client_port;
  if (ours) u->last_active = clock_ms(); /* it decoded: the association is in use, even if denied or unresolved */
  pthread_mutex_unlock(&u->lock);
  CHECK(napi_get_boolean(env, ours, &result));
  return result;
}

/* udpVerdict(handle, address, port, allowed): JavaScript's verdict on an address and port, both ways. */
static napi_value js_udp_verdict(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  bool allowed;
  unsigned char addr[16];
  int family;
  uint16_t port;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_t *u = endpoint_args(env, argv, &family, addr, &port);
  if (!u) return NULL;
  CHECK(napi_get_value_bool(env, argv[3], &allowed));
  pthread_mutex_lock(&u->lock);
  if (family && u->verdicts && !u->closed) remember_verdict(u, family, addr, port, allowed);
  pthread_mutex_unlock(&u->lock);
  return NULL;
}

/*
 * udpToClient(handle, datagram, headerLength): a reply JavaScript allowed,
 * as the relay thread handed it over (header and payload), sent to the client.
 */
static napi_value js_udp_to_client(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  void *data;
  size_t len;
  int32_t header;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_t *u = handle_of(env, argv[0]);
  if (!u) return NULL;
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  CHECK(napi_get_value_int32(env, argv[2], &header));
  pthread_mutex_lock(&u->lock);
  if (!u->closed && u->client_port != 0) {
    struct sockaddr_storage client;
    socklen_t client_len = make_address(&client, u->client_family, u->client, u->client_port);
    if (sendto(u->fd[CLIENT_SIDE], data, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&client, client_len) >= 0) {
      u->count[DOWN]++;
      u->count[BYTES_DOWN] += len - (size_t)header;
      u->last_active = clock_ms();
    } else {
      u->count[INVALID]++;
    }
  }
  pthread_mutex_unlock(&u->lock);
  return NULL;
}

/* [datagramsUp, datagramsDown, bytesUp, bytesDown, droppedForeign, droppedInvalid, droppedDenied, idleMs,
 *  toJs, outboundErrno] (lock held). toJs: datagrams handed to JavaScript that it has not yet taken; after
 * udpClose it never will, so they are lost, and JavaScript counts them as dropped. outboundErrno: why an
 * outbound socket first could not be opened (its datagrams were dropped), 0: never. */
static napi_value status_of(napi_env env, udp_t *u) {
  napi_value result, item;
  CHECK(napi_create_array_with_length(env, COUNTERS + 3, &result));
  for (int i = 0; i <= COUNTERS + 2; i++) {
    double value = i < COUNTERS ? (double)u->count[i]
                   : i == COUNTERS ? (double)(clock_ms() - u->last_active)
                   : i == COUNTERS + 1 ? (double)(u->to_js[0] + u->to_js[1])
                                       : (double)u->outbound_errno;
    CHECK(napi_create_double(env, value, &item));
    CHECK(napi_set_element(env, result, (uint32_t)i, item));
  }
  return result;
}

/* udpStatus(handle) -> the counters and the milliseconds since a datagram was last relayed. */
static napi_value js_udp_status(napi_env env, napi_callback_info info) {
  udp_t *u = sole_handle(env, info);
  if (!u) return NULL;
  pthread_mutex_lock(&u->lock);
  napi_value result = status_of(env, u);
  pthread_mutex_unlock(&u->lock);
  return result;
}

/* udpClose(handle) -> the final status: every socket closed, nothing relayed after it. Idempotent. */
static napi_value js_udp_close(napi_env env, napi_callback_info info) {
  udp_t *u = sole_handle(env, info);
  if (!u) return NULL;
  pthread_mutex_lock(&u->lock);
  int first = !u->closed;
  u->closed = 1;
  for (int i = 0; i < SOCKETS; i++) {
    if (u->fd[i] < 0) continue;
    epoll_ctl(epfd, EPOLL_CTL_DEL, u->fd[i], NULL);
    close(u->fd[i]);
    u->fd[i] = -1;
  }
  napi_value result = status_of(env, u);
  pthread_mutex_unlock(&u->lock);
  if (first) {
    /* The relay thread may hold an event for it from its current wait: it lets go before the next. */
    pthread_mutex_lock(&closed_lock);
    u->next_closed = closed_list;
    closed_list = u;
    pthread_mutex_unlock(&closed_lock);
  }
  return result;
}

napi_status udp_define(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"udpInit", NULL, js_udp_init, NULL, NULL, NULL, napi_default, NULL},
      {"udpOpen", NULL, js_udp_open, NULL, NULL, NULL, napi_default, NULL},
      {"udpSend", NULL, js_udp_send, NULL, NULL, NULL, napi_default, NULL},
      {"udpVerdict", NULL, js_udp_verdict, NULL, NULL, NULL, napi_default, NULL},
      {"udpClientPort", NULL, js_udp_client_port, NULL, NULL, NULL, napi_default, NULL},
      {"udpToClient", NULL, js_udp_to_client, NULL, NULL, NULL, napi_default, NULL},
      {"udpStatus", NULL, js_udp_status, NULL, NULL, NULL, napi_default, NULL},
      {"udpClose", NULL, js_udp_close, NULL, NULL, NULL, napi_default, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}

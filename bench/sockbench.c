/*
 * sockbench: the load generator and the target servers of socksgate's
 * benchmark (bench/run.ts compiles this with the machine's gcc at bench time
 * and drives it; see bench/README.md for why it is C and not Node).
 *
 *   sockbench target
 *       Listens on five 127.0.0.1 TCP ports and one UDP port and prints them
 *       as one JSON line:
 *         sink    reads batches (a u64 LE length, then that many bytes) and acks
 *                 each with the running byte count (u64 LE)
 *         source  each 8-byte u64 LE request N queues N bytes to send; after
 *                 the client's EOF and once all is sent, closes
 *         echo    echoes
 *         socks   a null SOCKS5 server: answers greeting and CONNECT request at
 *                 once without dialing (the "no proxy" reference for handshakes)
 *         hangup  hangs up (FIN) as soon as it accepts; closes on EOF
 *         udp     a UDP echo: every datagram goes back to its sender
 *       A "hangup" line on stdin closes every accepted connection. Closing
 *       first on the server side keeps TIME_WAIT off ephemeral ports (see
 *       bench/README.md). A "sent" line prints how many bytes the source
 *       connections have sent so far (the backpressure check watches it).
 *       Single-threaded epoll. Exits when its stdin reaches EOF.
 *
 *   sockbench upload|download|handshake|latency|idle|stall|udp [--key value ...]
 *       --connect PORT   where to connect (the proxy, or the target directly)
 *       --socks 0|1      do the SOCKS5 exchange first (default 1)
 *       --dest PORT      destination port asked for in the SOCKS5 request
 *       --dest-name NAME ask for NAME (ATYP 3, resolved by the proxy) instead of 127.0.0.1
 *       --user U --pass P  offer only username/password (RFC 1929)
 *     and per command: --streams --seconds --batch (upload/download),
 *     --concurrency --seconds --warmup-ms (handshake), --conns --seconds --size --warmup-ms
 *     (latency), --stages 1000,5000,9000 --concurrency (idle), --bytes
 *     [--hold-ms] (stall: without --hold-ms it holds until a line on stdin),
 *     --assocs --seconds --warmup-ms --window --size --timeout-ms (udp: SOCKS5
 *     UDP ASSOCIATE, --dest the target's UDP echo). Prints one JSON object
 *     (idle and stall also print progress lines {"event":...}). Every loop is
 *     bounded by time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ util */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double secs(uint64_t ns) { return (double)ns / 1e9; }

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "sockbench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

static int g_argc;
static char **g_argv;

static const char *opt_str(const char *name, const char *def) {
  for (int i = 2; i + 1 < g_argc; i++) {
    if (g_argv[i][0] == '-' && g_argv[i][1] == '-' && strcmp(g_argv[i] + 2, name) == 0) return g_argv[i + 1];
  }
  return def;
}

static double opt_num(const char *name, double def) {
  const char *s = opt_str(name, NULL);
  if (!s) return def;
  char *end;
  double v = strtod(s, &end);
  if (*end) die("--%s: not a number: %s", name, s);
  return v;
}

static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

static unsigned char *g_data; /* pseudo-random payload, DATA_SIZE bytes */
#define DATA_SIZE (1 << 20)

static void init_data(void) {
  g_data = malloc(DATA_SIZE);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < DATA_SIZE; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    g_data[i] = (unsigned char)x;
  }
}

static void rusage_json(char *out, size_t n) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  snprintf(out, n, "\"cpuUser\":%.3f,\"cpuSys\":%.3f",
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
}

/* Error tally: distinct messages with counts, for the JSON result. */
#define MAX_ERRKINDS 16
static struct { char msg[96]; long count; } g_errs[MAX_ERRKINDS];
static long g_errtotal;
static pthread_mutex_t g_errlock = PTHREAD_MUTEX_INITIALIZER;

static void tally(const char *fmt, ...) {
  char msg[96];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&g_errlock);
  g_errtotal++;
  for (int i = 0; i < MAX_ERRKINDS; i++) {
    if (g_errs[i].count == 0) { snprintf(g_errs[i].msg, sizeof g_errs[i].msg, "%s", msg); g_errs[i].count = 1; break; }
    if (strcmp(g_errs[i].msg, msg) == 0) { g_errs[i].count++; break; }
  }
  pthread_mutex_unlock(&g_errlock);
}

static void errors_json(char *out, size_t n) {
  size_t used = (size_t)snprintf(out, n, "\"errors\":%ld,\"errorKinds\":{", g_errtotal);
  for (int i = 0; i < MAX_ERRKINDS && g_errs[i].count && used < n; i++) {
    used += (size_t)snprintf(out + used, n - used, "%s\"%s\":%ld", i ? "," : "", g_errs[i].msg, g_errs[i].count);
  }
  if (used < n) snprintf(out + used, n - used, "}");
}

/* ---------------------------------------------------------------- target */

enum { M_SINK, M_SOURCE, M_ECHO, M_SOCKS, M_HANGUP, M_LISTEN, M_STDIN, M_UDP };
#define N_MODES 5
#define MAX_FD 65536

struct tconn {
  int fd, mode;
  uint32_t events;
  uint64_t count;   /* sink: bytes read */
  uint64_t pending; /* source: bytes still to send */
  unsigned char rq[8];
  int rqlen;
  uint64_t left; /* sink: bytes left in the current batch */
  int eof;
  unsigned char *obuf; /* echo: unsent bytes */
  int olen, ooff;
  unsigned char sbuf[600]; /* socks: handshake bytes */
  int slen, sstate;
};

static int t_ep;
static unsigned char t_buf[256 * 1024];
static struct tconn *t_byfd[MAX_FD]; /* accepted connections, for "hangup" */
static uint64_t t_source_sent;        /* bytes sent by every source connection, for "sent" */
static uint64_t t_udp_echoed, t_udp_dropped;

static void t_events(struct tconn *c, uint32_t ev) {
  if (c->events == ev) return;
  c->events = ev;
  struct epoll_event e = {.events = ev, .data.ptr = c};
  epoll_ctl(t_ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void t_close(struct tconn *c) {
  if (c->fd >= 0 && c->fd < MAX_FD) t_byfd[c->fd] = NULL;
  close(c->fd);
  free(c->obuf);
  free(c);
}

static int t_listen(int mode, struct tconn **out) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = loopback(0);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) die("target: bind/listen: %s", strerror(errno));
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  struct tconn *c = calloc(1, sizeof *c);
  c->fd = fd;
  c->mode = M_LISTEN;
  c->count = (uint64_t)mode; /* the mode of accepted connections */
  c->events = EPOLLIN;
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
  epoll_ctl(t_ep, EPOLL_CTL_ADD, fd, &e);
  *out = c;
  return ntohs(a.sin_port);
}

/* Source: send what is pending, a bounded amount per wake-up. Returns 0 when the connection closed. */
static int t_source_send(struct tconn *c) {
  for (int i = 0; i < 8 && c->pending > 0; i++) {
    size_t n = c->pending < DATA_SIZE ? (size_t)c->pending : DATA_SIZE;
    ssize_t w = send(c->fd, g_data, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN) break;
      t_close(c);
      return 0;
    }
    c->pending -= (uint64_t)w;
    t_source_sent += (uint64_t)w;
  }
  if (c->pending == 0 && c->eof) { t_close(c); return 0; }
  t_events(c, (c->eof ? 0 : EPOLLIN) | (c->pending ? EPOLLOUT : 0));
  return 1;
}

static void t_socks_in(struct tconn *c, const unsigned char *p, ssize_t n) {
  if (c->sstate == 2) return; /* handshake done: discard */
  if (c->slen + n > (ssize_t)sizeof c->sbuf) n = (ssize_t)sizeof c->sbuf - c->slen;
  memcpy(c->sbuf + c->slen, p, (size_t)n);
  c->slen += (int)n;
  if (c->sstate == 0 && c->slen >= 2 && c->slen >= 2 + c->sbuf[1]) {
    int used = 2 + c->sbuf[1];
    memmove(c->sbuf, c->sbuf + used, (size_t)(c->slen - used));
    c->slen -= used;
    send(c->fd, "\x05\x00", 2, MSG_NOSIGNAL);
    c->sstate = 1;
  }
  if (c->sstate == 1 && c->slen >= 5) {
    int atyp = c->sbuf[3];
    int need = atyp == 1 ? 10 : atyp == 4 ? 22 : 7 + c->sbuf[4];
    if (c->slen >= need) {
      send(c->fd, "\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00", 10, MSG_NOSIGNAL);
      c->sstate = 2;
    }
  }
}

static void t_readable(struct tconn *c) {
  if (c->mode == M_SOURCE) {
    unsigned char buf[4096];
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EAGAIN) return;
    if (r <= 0) {
      if (r < 0) { t_close(c); return; }
      c->eof = 1;
    }
    for (ssize_t i = 0; i < r; i++) {
      c->rq[c->rqlen++] = buf[i];
      if (c->rqlen == 8) { c->pending += get_u64(c->rq); c->rqlen = 0; }
    }
    t_source_send(c);
    return;
  }
  for (int i = 0; i < 4; i++) {
    ssize_t r = recv(c->fd, t_buf, sizeof t_buf, 0);
    if (r < 0 && errno == EAGAIN) return;
    if (r < 0) { t_close(c); return; }
    if (r == 0) {
      if (c->mode == M_ECHO && c->olen > c->ooff) { c->eof = 1; t_events(c, EPOLLOUT); return; }
      t_close(c);
      return;
    }
    if (c->mode == M_HANGUP) {
      /* discard: we have hung up already */
    } else if (c->mode == M_SINK) {
      for (ssize_t k = 0; k < r;) {
        if (c->left == 0) { /* a batch header */
          c->rq[c->rqlen++] = t_buf[k++];
          if (c->rqlen == 8) { c->left = get_u64(c->rq); c->rqlen = 0; }
          continue;
        }
        uint64_t take = (uint64_t)(r - k) < c->left ? (uint64_t)(r - k) : c->left;
        c->left -= take;
        c->count += take;
        k += (ssize_t)take;
        if (c->left == 0) { /* batch complete: ack the running count */
          unsigned char out[8];
          put_u64(out, c->count);
          if (send(c->fd, out, 8, MSG_NOSIGNAL) != 8) { t_close(c); return; }
        }
      }
    } else if (c->mode == M_SOCKS) {
      t_socks_in(c, t_buf, r);
    } else { /* echo */
      ssize_t w = send(c->fd, t_buf, (size_t)r, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN) { t_close(c); return; }
      if (w < 0) w = 0;
      if (w < r) {
        c->obuf = realloc(c->obuf, (size_t)(r - w));
        memcpy(c->obuf, t_buf + w, (size_t)(r - w));
        c->olen = (int)(r - w);
        c->ooff = 0;
        t_events(c, EPOLLOUT); /* stop reading until the echo is out */
        return;
      }
    }
  }
}

static void t_writable(struct tconn *c) {
  if (c->mode == M_SOURCE) { t_source_send(c); return; }
  if (c->mode == M_ECHO) {
    ssize_t w = send(c->fd, c->obuf + c->ooff, (size_t)(c->olen - c->ooff), MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) { t_close(c); return; }
    if (w > 0) c->ooff += (int)w;
    if (c->ooff == c->olen) {
      c->olen = c->ooff = 0;
      if (c->eof) { t_close(c); return; }
      t_events(c, EPOLLIN);
    }
  }
}

/* UDP echo: every datagram goes back to its sender; one the kernel will not take now is dropped (and counted). */
static void t_udp_echo(int fd) {
  for (int i = 0; i < 256; i++) {
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    ssize_t r = recvfrom(fd, t_buf, sizeof t_buf, MSG_DONTWAIT, (struct sockaddr *)&from, &len);
    if (r < 0) return;
    if (sendto(fd, t_buf, (size_t)r, MSG_DONTWAIT, (struct sockaddr *)&from, len) == r) t_udp_echoed++;
    else t_udp_dropped++;
  }
}

static int t_udp_socket(struct tconn **out) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  struct sockaddr_in a = loopback(0);
  if (bind(fd, (struct sockaddr *)&a, sizeof a)) die("target: udp bind: %s", strerror(errno));
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  struct tconn *c = calloc(1, sizeof *c);
  c->fd = fd;
  c->mode = M_UDP;
  c->events = EPOLLIN;
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
  epoll_ctl(t_ep, EPOLL_CTL_ADD, fd, &e);
  *out = c;
  return ntohs(a.sin_port);
}

static int cmd_target(void) {
  signal(SIGPIPE, SIG_IGN);
  init_data();
  t_ep = epoll_create1(0);
  struct tconn *l[N_MODES];
  int ports[N_MODES];
  for (int m = 0; m < N_MODES; m++) ports[m] = t_listen(m, &l[m]);
  struct tconn *u;
  int udp_port = t_udp_socket(&u);
  struct tconn in = {.fd = 0, .mode = M_STDIN};
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = &in};
  epoll_ctl(t_ep, EPOLL_CTL_ADD, 0, &e);
  printf("{\"sink\":%d,\"source\":%d,\"echo\":%d,\"socks\":%d,\"hangup\":%d,\"udp\":%d,\"pid\":%d}\n", ports[M_SINK],
         ports[M_SOURCE], ports[M_ECHO], ports[M_SOCKS], ports[M_HANGUP], udp_port, getpid());
  fflush(stdout);
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(t_ep, evs, 256, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
      struct tconn *c = evs[i].data.ptr;
      if (c->mode == M_STDIN) {
        char b[256];
        ssize_t r = read(0, b, sizeof b - 1);
        if (r <= 0) return 0;
        b[r] = 0;
        if (strstr(b, "hangup")) { /* close every accepted connection: the server side closes first */
          int closed = 0;
          for (int fd = 0; fd < MAX_FD; fd++) {
            if (t_byfd[fd]) { t_close(t_byfd[fd]); closed++; }
          }
          printf("{\"hungup\":%d}\n", closed);
        }
        if (strstr(b, "sent")) { /* how far the sources have got (backpressure: is the sender still making progress?) */
          printf("{\"sent\":%llu,\"udpEchoed\":%llu,\"udpDropped\":%llu}\n", (unsigned long long)t_source_sent,
                 (unsigned long long)t_udp_echoed, (unsigned long long)t_udp_dropped);
        }
        continue;
      }
      if (c->mode == M_UDP) {
        t_udp_echo(c->fd);
        continue;
      }
      if (c->mode == M_LISTEN) {
        for (int k = 0; k < 64; k++) {
          int fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK);
          if (fd < 0) break;
          if (fd >= MAX_FD) { close(fd); continue; }
          set_nodelay(fd);
          struct tconn *a = calloc(1, sizeof *a);
          a->fd = fd;
          a->mode = (int)c->count;
          t_byfd[fd] = a;
          if (a->mode == M_HANGUP) shutdown(fd, SHUT_WR);
          a->events = EPOLLIN;
          struct epoll_event ae = {.events = EPOLLIN, .data.ptr = a};
          epoll_ctl(t_ep, EPOLL_CTL_ADD, fd, &ae);
        }
        continue;
      }
      uint32_t ev = evs[i].events;
      /* A handler may free c, so only one of them runs per wake-up; level-triggered epoll brings the other back. */
      if (c->mode == M_SOURCE) {
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) t_readable(c); /* reads requests, then sends */
        else t_writable(c);
      } else if (ev & EPOLLOUT) {
        t_writable(c);
      } else if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        t_readable(c);
      }
    }
  }
}

/* ------------------------------------------------ blocking client helpers */

static int g_connect_port, g_dest_port, g_socks;
static const char *g_user, *g_pass;

static int write_all(int fd, const void *p, size_t n) {
  const unsigned char *b = p;
  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_exact(int fd, void *p, size_t n) {
  unsigned char *b = p;
  while (n > 0) {
    ssize_t r = recv(fd, b, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    b += r;
    n -= (size_t)r;
  }
  return 0;
}

/* The SOCKS5 messages this client sends. */
static size_t greeting(unsigned char *out) {
  out[0] = 5; out[1] = 1; out[2] = g_user ? 2 : 0;
  return 3;
}

static size_t auth_message(unsigned char *out) {
  size_t ul = strlen(g_user), pl = strlen(g_pass);
  out[0] = 1; out[1] = (unsigned char)ul;
  memcpy(out + 2, g_user, ul);
  out[2 + ul] = (unsigned char)pl;
  memcpy(out + 3 + ul, g_pass, pl);
  return 3 + ul + pl;
}

/* --dest-name: CONNECT to this name (ATYP 3), which the proxy resolves, instead of 127.0.0.1. */
static const char *g_dest_name;

static size_t request(unsigned char *out) {
  if (g_dest_name) {
    size_t n = strlen(g_dest_name);
    unsigned char head[5] = {5, 1, 0, 3, (unsigned char)n};
    memcpy(out, head, 5);
    memcpy(out + 5, g_dest_name, n);
    out[5 + n] = (unsigned char)(g_dest_port >> 8);
    out[6 + n] = (unsigned char)g_dest_port;
    return 7 + n;
  }
  unsigned char r[10] = {5, 1, 0, 1, 127, 0, 0, 1, (unsigned char)(g_dest_port >> 8), (unsigned char)g_dest_port};
  memcpy(out, r, 10);
  return 10;
}

/* Length of a SOCKS5 reply given its first 5 bytes. */
static int reply_length(const unsigned char *h) {
  return h[3] == 1 ? 10 : h[3] == 4 ? 22 : 7 + h[4];
}

/*
 * Connects (blocking, with send/receive timeouts) and does the SOCKS5
 * exchange with the request `req` (CONNECT to --dest when NULL). The whole
 * reply goes to `reply` when not NULL (at least 22 bytes). Returns the fd or -1.
 */
static int dial_socks(int timeout_s, const unsigned char *req, size_t reqlen, unsigned char *reply) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct timeval tv = {.tv_sec = timeout_s};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  set_nodelay(fd);
  struct sockaddr_in a = loopback(g_connect_port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a)) { tally("connect: %s", strerror(errno)); close(fd); return -1; }
  if (!g_socks) return fd;
  unsigned char m[600];
  if (write_all(fd, m, greeting(m)) || read_exact(fd, m, 2)) goto io;
  if (m[0] != 5 || m[1] != (g_user ? 2 : 0)) { tally("method reply %02x %02x", m[0], m[1]); close(fd); return -1; }
  if (g_user) {
    if (write_all(fd, m, auth_message(m)) || read_exact(fd, m, 2)) goto io;
    if (m[1] != 0) { tally("auth status %02x", m[1]); close(fd); return -1; }
  }
  if (req) memcpy(m, req, reqlen);
  else reqlen = request(m);
  if (write_all(fd, m, reqlen) || read_exact(fd, m, 5)) goto io;
  if (m[0] != 5 || m[1] != 0) { tally("reply code %02x", m[1]); close(fd); return -1; }
  if (read_exact(fd, m + 5, (size_t)(reply_length(m) - 5))) goto io;
  if (reply) memcpy(reply, m, (size_t)reply_length(m));
  return fd;
io:
  tally("handshake: %s", errno ? strerror(errno) : "closed");
  close(fd);
  return -1;
}

static int dial_blocking(int timeout_s) { return dial_socks(timeout_s, NULL, 0, NULL); }

/* ------------------------------------------------------ upload / download */

struct stream {
  pthread_t th;
  int index;
  uint64_t bytes, expected, extra;
  uint64_t end_ns;
  int ok;
};

static pthread_barrier_t g_barrier;
static uint64_t g_start_ns, g_deadline_ns, g_batch;
static int g_dial_failed;

static void *upload_stream(void *arg) {
  struct stream *s = arg;
  int fd = dial_blocking(30);
  if (fd < 0) g_dial_failed = 1;
  pthread_barrier_wait(&g_barrier); /* every stream connected: the clock starts */
  pthread_barrier_wait(&g_barrier);
  if (fd < 0) return NULL;
  /*
   * Framed, because not every proxy passes a half-close on (microsocks closes
   * both ways on the first EOF): each batch is an 8-byte length and that many
   * bytes; the sink acks each batch with its running byte count. Two batches
   * in flight keep the pipe full.
   */
  unsigned char hdr[8], ack[8];
  put_u64(hdr, g_batch);
  uint64_t sent = 0, acked = 0;
  size_t off = (size_t)s->index * 4096 % DATA_SIZE;
  for (;;) {
    if (sent - acked >= 2 || (sent > 0 && now_ns() >= g_deadline_ns)) {
      if (acked == sent) break;
      if (read_exact(fd, ack, 8)) { tally("upload ack: %s", errno ? strerror(errno) : "closed"); close(fd); return NULL; }
      acked++;
      s->expected = get_u64(ack);
      if (s->expected != acked * g_batch) { tally("upload: sink counted %llu, expected %llu", (unsigned long long)s->expected, (unsigned long long)(acked * g_batch)); close(fd); return NULL; }
      continue;
    }
    if (write_all(fd, hdr, 8)) goto fail;
    for (uint64_t left = g_batch; left > 0;) {
      size_t n = left < 128 * 1024 ? (size_t)left : 128 * 1024;
      if (off + n > DATA_SIZE) off = 0;
      ssize_t w = send(fd, g_data + off, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) goto fail;
      s->bytes += (uint64_t)w;
      off += (size_t)w;
      left -= (uint64_t)w;
    }
    sent++;
  }
  s->end_ns = now_ns();
  s->ok = s->expected == s->bytes;
  close(fd);
  return NULL;
fail:
  tally("upload send: %s", strerror(errno));
  close(fd);
  return NULL;
}

static void *download_stream(void *arg) {
  struct stream *s = arg;
  int fd = dial_blocking(30);
  if (fd < 0) g_dial_failed = 1;
  pthread_barrier_wait(&g_barrier);
  pthread_barrier_wait(&g_barrier);
  if (fd < 0) return NULL;
  unsigned char rq[8];
  put_u64(rq, g_batch);
  const size_t bufsize = 256 * 1024;
  unsigned char *buf = malloc(bufsize);
  uint64_t requested = 0; /* batches */
  /* Two batches in flight, so the pipe never drains between requests. */
  do {
    while (requested - s->bytes / g_batch < 2 && (requested < 2 || now_ns() < g_deadline_ns)) {
      if (write_all(fd, rq, 8)) { tally("download request: %s", strerror(errno)); close(fd); free(buf); return NULL; }
      requested++;
    }
    s->expected = requested * g_batch;
    if (s->bytes >= s->expected) break;
    uint64_t want = s->expected - s->bytes;
    ssize_t r = recv(fd, buf, want < bufsize ? (size_t)want : bufsize, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { tally("download recv: %s", r ? strerror(errno) : "early EOF"); close(fd); free(buf); return NULL; }
    s->bytes += (uint64_t)r;
  } while (s->bytes < s->expected || now_ns() < g_deadline_ns);
  s->end_ns = now_ns();
  shutdown(fd, SHUT_WR);
  for (;;) { /* nothing may follow the requested bytes */
    ssize_t r = recv(fd, buf, bufsize, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    s->extra += (uint64_t)r;
  }
  free(buf);
  s->ok = s->extra == 0 && s->bytes == s->expected;
  if (!s->ok) tally("download: %llu bytes beyond the requested", (unsigned long long)s->extra);
  close(fd);
  return NULL;
}

static int cmd_bulk(int download) {
  int streams = (int)opt_num("streams", 1);
  double seconds = opt_num("seconds", 2);
  g_batch = (uint64_t)opt_num("batch", 8 << 20);
  if (streams < 1 || streams > 256) die("--streams 1..256");
  struct stream *s = calloc((size_t)streams, sizeof *s);
  pthread_barrier_init(&g_barrier, NULL, (unsigned)streams + 1);
  for (int i = 0; i < streams; i++) {
    s[i].index = i;
    pthread_create(&s[i].th, NULL, download ? download_stream : upload_stream, &s[i]);
  }
  pthread_barrier_wait(&g_barrier);
  g_start_ns = now_ns();
  g_deadline_ns = g_start_ns + (uint64_t)(seconds * 1e9);
  pthread_barrier_wait(&g_barrier);
  uint64_t total = 0, expected = 0, end = g_start_ns;
  int ok = !g_dial_failed;
  for (int i = 0; i < streams; i++) {
    pthread_join(s[i].th, NULL);
    total += s[i].bytes;
    expected += s[i].expected;
    if (s[i].end_ns > end) end = s[i].end_ns;
    ok = ok && s[i].ok;
  }
  double elapsed = secs(end - g_start_ns);
  char ru[128], er[1024];
  rusage_json(ru, sizeof ru);
  errors_json(er, sizeof er);
  printf("{\"ok\":%s,\"exact\":%s,\"streams\":%d,\"bytes\":%llu,\"expected\":%llu,\"seconds\":%.4f,\"mbps\":%.2f,%s,%s}\n",
         ok ? "true" : "false", ok && total == expected ? "true" : "false", streams, (unsigned long long)total,
         (unsigned long long)expected, elapsed, elapsed > 0 ? (double)total / 1e6 / elapsed : 0.0, ru, er);
  return ok ? 0 : 1;
}

/* ----------------------------------------- non-blocking SOCKS5 connections */

enum { C_FREE, C_CONNECTING, C_METHOD, C_AUTH, C_REPLY, C_READY, C_PING, C_IDLE_ECHO, C_IDLE };

struct conn {
  int fd, state;
  uint64_t t0;      /* start of the current step */
  unsigned char buf[600];
  int have, need;
  uint64_t sent;    /* latency: round trips */
};

static int c_ep;

static void c_close(struct conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->state = C_FREE;
}

static int c_send(struct conn *c, const unsigned char *p, size_t n) {
  ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
  if (w == (ssize_t)n) return 0;
  tally("send: %s", w < 0 ? strerror(errno) : "short write");
  return -1;
}

/*
 * Source ports for --private-ports: the handshake client binds each socket to
 * the next port of 10000-31999 (SO_REUSEADDR, which may take a port whose
 * only holder is a TIME_WAIT socket), so the TIME_WAIT of its closes stays off
 * the ephemeral range (32768-60999) that the proxies' own outgoing
 * connections, and Dante's bind(port 0), allocate from.
 */
#define PRIVATE_LO 10000
#define PRIVATE_HI 31999
static int g_private_ports, g_next_port;

static int c_socket(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  set_nodelay(fd);
  return fd;
}

/* Starts a connection; returns -1 (and tallies) on immediate failure. */
static int c_start(struct conn *c) {
  c->fd = c_socket();
  if (c->fd < 0) { tally("socket: %s", strerror(errno)); c->state = C_FREE; return -1; }
  c->t0 = now_ns();
  c->have = 0;
  struct sockaddr_in a = loopback(g_connect_port);
  int r;
  if (!g_private_ports) {
    r = connect(c->fd, (struct sockaddr *)&a, sizeof a);
  } else {
    int one = 1;
    for (int attempt = 0;; attempt++) {
      if (g_next_port < PRIVATE_LO || g_next_port > PRIVATE_HI) g_next_port = PRIVATE_LO;
      struct sockaddr_in src = loopback(g_next_port++);
      setsockopt(c->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      r = bind(c->fd, (struct sockaddr *)&src, sizeof src);
      if (r == 0) r = connect(c->fd, (struct sockaddr *)&a, sizeof a);
      if (!(r < 0 && (errno == EADDRINUSE || errno == EADDRNOTAVAIL)) || attempt >= 1000) break;
      close(c->fd); /* that port is still taken for this destination: the next one */
      c->fd = c_socket();
      if (c->fd < 0) { tally("socket: %s", strerror(errno)); c->state = C_FREE; return -1; }
    }
  }
  if (r < 0 && errno != EINPROGRESS) { tally("connect: %s", strerror(errno)); c_close(c); return -1; }
  c->state = C_CONNECTING;
  struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
  epoll_ctl(c_ep, EPOLL_CTL_ADD, c->fd, &e);
  return 0;
}

static void c_want_read(struct conn *c, int need) {
  c->have = 0;
  c->need = need;
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
  epoll_ctl(c_ep, EPOLL_CTL_MOD, c->fd, &e);
}

/*
 * Advances the handshake on an event. Returns 1 when the connection has just
 * become READY (SOCKS reply received, or connected when --socks 0), 0 when it
 * is still under way, -1 when it failed (closed, tallied).
 */
static int c_handshake(struct conn *c) {
  if (c->state == C_CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { tally("connect: %s", strerror(err)); c_close(c); return -1; }
    if (!g_socks) { c->state = C_READY; return 1; }
    unsigned char m[8];
    if (c_send(c, m, greeting(m))) { c_close(c); return -1; }
    c->state = C_METHOD;
    c_want_read(c, 2);
    return 0;
  }
  ssize_t r = recv(c->fd, c->buf + c->have, (size_t)(c->need - c->have), 0);
  if (r < 0 && errno == EAGAIN) return 0;
  if (r <= 0) { tally("handshake: %s", r ? strerror(errno) : "closed by server"); c_close(c); return -1; }
  c->have += (int)r;
  if (c->have < c->need) return 0;
  unsigned char m[600];
  switch (c->state) {
    case C_METHOD:
      if (c->buf[0] != 5 || c->buf[1] != (g_user ? 2 : 0)) { tally("method reply %02x %02x", c->buf[0], c->buf[1]); c_close(c); return -1; }
      if (g_user) {
        if (c_send(c, m, auth_message(m))) { c_close(c); return -1; }
        c->state = C_AUTH;
        c_want_read(c, 2);
        return 0;
      }
      __attribute__((fallthrough)); /* no authentication: send the request */
    case C_AUTH:
      if (c->state == C_AUTH && c->buf[1] != 0) { tally("auth status %02x", c->buf[1]); c_close(c); return -1; }
      if (c_send(c, m, request(m))) { c_close(c); return -1; }
      c->state = C_REPLY;
      c_want_read(c, 5);
      return 0;
    case C_REPLY:
      if (c->buf[0] != 5 || c->buf[1] != 0) { tally("reply code %02x", c->buf[1]); c_close(c); return -1; }
      if (c->need == 5 && reply_length(c->buf) > 5) { c->need = reply_length(c->buf); return c_handshake(c); }
      c->state = C_READY;
      return 1;
  }
  return 0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

struct samples { uint32_t *v; size_t n, cap; };

static void sample(struct samples *s, uint64_t ns) {
  if (s->n == s->cap) {
    if (s->cap >= (1u << 26)) return; /* bounded */
    s->cap = s->cap ? s->cap * 2 : 65536;
    s->v = realloc(s->v, s->cap * sizeof *s->v);
  }
  s->v[s->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static double pct(struct samples *s, double p) {
  if (s->n == 0) return 0;
  size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
  return s->v[i] / 1e3; /* µs */
}

static void percentiles_json(struct samples *s, char *out, size_t n) {
  qsort(s->v, s->n, sizeof *s->v, cmp_u32);
  double sum = 0;
  for (size_t i = 0; i < s->n; i++) sum += s->v[i];
  snprintf(out, n, "\"samples\":%zu,\"p50us\":%.1f,\"p90us\":%.1f,\"p99us\":%.1f,\"p999us\":%.1f,\"maxus\":%.1f,\"meanus\":%.1f",
           s->n, pct(s, 0.5), pct(s, 0.9), pct(s, 0.99), pct(s, 0.999), s->n ? s->v[s->n - 1] / 1e3 : 0.0,
           s->n ? sum / (double)s->n / 1e3 : 0.0);
}

/* ------------------------------------------------------------- handshake */

/*
 * Handshakes one at a time, uncounted, until `warmup` has passed since the
 * first one completed: a cost paid once per server process (a password check
 * the proxy then remembers, code loaded on first use) is not a handshake
 * rate. Failures are tallied and end the warm-up; the timed run reports them.
 */
static void warm_up(struct conn *c, uint64_t warmup, uint64_t timeout) {
  uint64_t began = now_ns(), first = 0;
  while (!first || now_ns() - first < warmup) {
    if (now_ns() - began > timeout || c_start(c) < 0) return;
    for (;;) {
      struct epoll_event ev;
      int r = epoll_wait(c_ep, &ev, 1, 50) == 1 ? c_handshake(c) : 0;
      if (r < 0) return; /* closed and tallied */
      if (r == 1) break;
      if (now_ns() - c->t0 > timeout) { tally("warm-up timeout in state %d", c->state); c_close(c); return; }
    }
    c_close(c);
    if (!first) first = now_ns();
  }
}

static int cmd_handshake(void) {
  int conc = (int)opt_num("concurrency", 1);
  double seconds = opt_num("seconds", 2);
  uint64_t timeout = (uint64_t)(opt_num("timeout-ms", 10000) * 1e6);
  uint64_t warmup = (uint64_t)(opt_num("warmup-ms", 0) * 1e6);
  g_private_ports = (int)opt_num("private-ports", 1);
  g_next_port = PRIVATE_LO + (int)(now_ns() / 1000 % (PRIVATE_HI - PRIVATE_LO));
  c_ep = epoll_create1(0);
  struct conn *cs = calloc((size_t)conc, sizeof *cs);
  struct samples lat = {0};
  cs[0].fd = -1;
  if (warmup > 0) warm_up(&cs[0], warmup, timeout);
  uint64_t start = now_ns(), deadline = start + (uint64_t)(seconds * 1e9), last = start;
  long done = 0, late = 0;
  for (int i = 0; i < conc; i++) { cs[i].fd = -1; c_start(&cs[i]); }
  struct epoll_event evs[256];
  for (;;) {
    uint64_t t = now_ns();
    int active = 0;
    for (int i = 0; i < conc; i++) {
      struct conn *c = &cs[i];
      if (c->state != C_FREE && t - c->t0 > timeout) { tally("timeout in state %d", c->state); c_close(c); }
      if (c->state == C_FREE && t < deadline) c_start(c);
      if (c->state != C_FREE) active++;
    }
    if (!active || t > deadline + timeout + 1000000000ull) break;
    int n = epoll_wait(c_ep, evs, 256, 50);
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      uint64_t began = c->t0;
      int r = c_handshake(c);
      if (r == 1) {
        uint64_t end = now_ns();
        c_close(c); /* reply received: close at once, as a client that got what it wanted */
        if (end <= deadline) { done++; sample(&lat, end - began); last = end; }
        else late++;
        if (end < deadline) c_start(c);
      } else if (r < 0 && now_ns() < deadline) {
        c_start(c);
      }
    }
  }
  (void)last;
  char ru[128], er[1024], pc[256];
  rusage_json(ru, sizeof ru);
  errors_json(er, sizeof er);
  percentiles_json(&lat, pc, sizeof pc);
  printf("{\"ok\":%s,\"concurrency\":%d,\"handshakes\":%ld,\"late\":%ld,\"seconds\":%.4f,\"rate\":%.1f,%s,%s,%s}\n",
         done > 0 ? "true" : "false", conc, done, late, seconds, (double)done / seconds, pc, ru, er);
  return done > 0 ? 0 : 1;
}

/* --------------------------------------------------------------- latency */

static int cmd_latency(void) {
  int conns = (int)opt_num("conns", 1);
  double seconds = opt_num("seconds", 2);
  uint64_t warmup = (uint64_t)(opt_num("warmup-ms", 200) * 1e6);
  int size = (int)opt_num("size", 64);
  if (size < 1 || size > 512) die("--size 1..512");
  c_ep = epoll_create1(0);
  struct conn *cs = calloc((size_t)conns, sizeof *cs);
  struct epoll_event evs[256];
  int ready = 0, failed = 0;
  for (int i = 0; i < conns; i++) { cs[i].fd = -1; if (c_start(&cs[i])) failed++; }
  uint64_t setup_deadline = now_ns() + 30000000000ull;
  while (ready + failed < conns && now_ns() < setup_deadline) {
    int n = epoll_wait(c_ep, evs, 256, 100);
    for (int i = 0; i < n; i++) {
      int r = c_handshake(evs[i].data.ptr);
      if (r == 1) ready++;
      else if (r < 0) failed++;
    }
  }
  if (ready < conns) die("latency: only %d of %d connections were set up", ready, conns);
  unsigned char msg[512];
  memcpy(msg, g_data, (size_t)size);
  struct samples lat = {0};
  uint64_t start = now_ns(), measure = start + warmup, deadline = measure + (uint64_t)(seconds * 1e9);
  long trips = 0, mismatches = 0;
  for (int i = 0; i < conns; i++) {
    struct conn *c = &cs[i];
    c->state = C_PING;
    c_want_read(c, size);
    c->t0 = now_ns();
    if (c_send(c, msg, (size_t)size)) die("latency: send failed");
  }
  int running = conns;
  while (running > 0 && now_ns() < deadline + 10000000000ull) {
    int n = epoll_wait(c_ep, evs, 256, 100);
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c->state != C_PING) continue;
      ssize_t r = recv(c->fd, c->buf + c->have, (size_t)(c->need - c->have), 0);
      if (r < 0 && errno == EAGAIN) continue;
      if (r <= 0) { tally("latency recv: %s", r ? strerror(errno) : "closed"); c_close(c); running--; continue; }
      c->have += (int)r;
      if (c->have < c->need) continue;
      uint64_t t = now_ns();
      if (memcmp(c->buf, msg, (size_t)size) != 0) mismatches++;
      if (c->t0 >= measure && t <= deadline) { sample(&lat, t - c->t0); trips++; }
      if (t >= deadline) { c_close(c); running--; continue; }
      c->have = 0;
      c->t0 = t;
      if (c_send(c, msg, (size_t)size)) { c_close(c); running--; }
    }
  }
  for (int i = 0; i < conns; i++) if (cs[i].state != C_FREE) c_close(&cs[i]);
  if (mismatches) tally("echo mismatch");
  char ru[128], er[1024], pc[256];
  rusage_json(ru, sizeof ru);
  errors_json(er, sizeof er);
  percentiles_json(&lat, pc, sizeof pc);
  int ok = g_errtotal == 0 && trips > 0;
  printf("{\"ok\":%s,\"conns\":%d,\"size\":%d,\"trips\":%ld,\"seconds\":%.4f,\"rate\":%.1f,%s,%s,%s}\n", ok ? "true" : "false",
         conns, size, trips, seconds, (double)trips / seconds, pc, ru, er);
  return ok ? 0 : 1;
}

/* ------------------------------------------------------------------ idle */

static int cmd_idle(void) {
  const char *stages_text = opt_str("stages", "1000");
  int conc = (int)opt_num("concurrency", 64);
  uint64_t timeout = (uint64_t)(opt_num("timeout-ms", 10000) * 1e6);
  int stages[16], nstages = 0;
  for (const char *p = stages_text; *p && nstages < 16;) {
    stages[nstages++] = atoi(p);
    p = strchr(p, ',');
    if (!p) break;
    p++;
  }
  int max = stages[nstages - 1];
  c_ep = epoll_create1(0);
  struct conn *cs = calloc((size_t)max, sizeof *cs);
  for (int i = 0; i < max; i++) cs[i].fd = -1;
  int opened = 0, started = 0, inflight = 0;
  struct epoll_event evs[256];
  unsigned char probe[8] = {'i', 'd', 'l', 'e', '-', 'o', 'k', '!'};
  uint64_t last_check = 0;
  for (int st = 0; st < nstages; st++) {
    uint64_t t_stage = now_ns(), stage_deadline = t_stage + 120000000000ull;
    while (opened < stages[st] && now_ns() < stage_deadline) {
      while (inflight < conc && started < stages[st]) {
        if (c_start(&cs[started]) == 0) inflight++;
        started++;
      }
      if (inflight == 0 && started >= stages[st]) break;
      int n = epoll_wait(c_ep, evs, 256, 100);
      for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->state == C_IDLE) { tally("an idle session was closed by the far end"); c_close(c); opened--; continue; }
        if (c->state == C_IDLE_ECHO) {
          ssize_t r = recv(c->fd, c->buf + c->have, (size_t)(c->need - c->have), 0);
          if (r < 0 && errno == EAGAIN) continue;
          if (r <= 0) { tally("idle echo: %s", r ? strerror(errno) : "closed"); c_close(c); inflight--; continue; }
          c->have += (int)r;
          if (c->have == 8) {
            if (memcmp(c->buf, probe, 8)) tally("idle echo mismatch");
            c->state = C_IDLE;
            inflight--;
            opened++;
          }
          continue;
        }
        int r = c_handshake(c);
        if (r < 0) { inflight--; continue; }
        if (r == 1) {
          c->state = C_IDLE_ECHO;
          c_want_read(c, 8);
          if (c_send(c, probe, 8)) { c_close(c); inflight--; }
        }
      }
      uint64_t t = now_ns();
      if (t - last_check < 100000000ull) continue;
      last_check = t;
      for (int i = 0; i < started; i++) {
        struct conn *c = &cs[i];
        if (c->state != C_FREE && c->state != C_IDLE && t - c->t0 > timeout) {
          tally("timeout in state %d", c->state);
          c_close(c);
          inflight--;
        }
      }
    }
    printf("{\"event\":\"stage\",\"target\":%d,\"open\":%d,\"errors\":%ld,\"seconds\":%.3f}\n", stages[st], opened, g_errtotal,
           secs(now_ns() - t_stage));
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) break; /* the driver says "next" once it has measured */
  }
  /* Still all open? Idle sessions must not have been closed behind our back. */
  int alive = 0;
  int n = epoll_wait(c_ep, evs, 256, 0);
  for (int i = 0; i < n; i++) {
    struct conn *c = evs[i].data.ptr;
    if (c->state == C_IDLE) { tally("an idle session was closed by the far end"); c_close(c); opened--; }
  }
  for (int i = 0; i < max; i++) if (cs[i].state == C_IDLE) alive++;
  /*
   * Teardown (not measured): the driver makes the target hang up first, and
   * we close each session once its EOF has come through the proxy, so no
   * TIME_WAIT lands on an ephemeral port (see bench/README.md).
   */
  printf("{\"event\":\"draining\"}\n");
  fflush(stdout);
  char line[64];
  int hung = 0, waiting = alive;
  if (fgets(line, sizeof line, stdin)) {
    uint64_t drain_deadline = now_ns() + (uint64_t)(opt_num("drain-ms", 15000) * 1e6);
    while (waiting > 0 && now_ns() < drain_deadline) {
      int m = epoll_wait(c_ep, evs, 256, 100);
      for (int i = 0; i < m; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->state != C_IDLE) continue;
        unsigned char junk[64];
        ssize_t r = recv(c->fd, junk, sizeof junk, 0);
        if (r < 0 && errno == EAGAIN) continue;
        if (r > 0) continue;
        c_close(c);
        hung++;
        waiting--;
      }
    }
  }
  for (int i = 0; i < max; i++) if (cs[i].fd >= 0) c_close(&cs[i]);
  char ru[128], er[1024];
  rusage_json(ru, sizeof ru);
  errors_json(er, sizeof er);
  int ok = alive == max;
  printf("{\"ok\":%s,\"alive\":%d,\"wanted\":%d,\"hungUp\":%d,%s,%s}\n", ok ? "true" : "false", alive, max, hung, ru, er);
  return ok ? 0 : 1;
}

/* ----------------------------------------------------------------- stall */

static int cmd_stall(void) {
  uint64_t bytes = (uint64_t)opt_num("bytes", 1e9);
  int hold_ms = (int)opt_num("hold-ms", -1); /* -1: hold until the driver says "next" on stdin */
  int fd = dial_blocking(60);
  if (fd < 0) die("stall: could not connect");
  unsigned char rq[8];
  put_u64(rq, bytes);
  if (write_all(fd, rq, 8)) die("stall: request failed");
  printf("{\"event\":\"holding\"}\n");
  fflush(stdout);
  uint64_t held = now_ns();
  if (hold_ms >= 0) {
    usleep((useconds_t)hold_ms * 1000);
  } else {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) die("stall: stdin closed while holding");
  }
  double held_s = secs(now_ns() - held);
  printf("{\"event\":\"reading\"}\n");
  fflush(stdout);
  uint64_t got = 0, t0 = now_ns();
  static unsigned char buf[256 * 1024];
  while (got < bytes) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { tally("stall recv: %s", r ? strerror(errno) : "early EOF"); break; }
    got += (uint64_t)r;
  }
  double t = secs(now_ns() - t0);
  shutdown(fd, SHUT_WR);
  uint64_t extra = 0;
  for (;;) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r <= 0) break;
    extra += (uint64_t)r;
  }
  close(fd);
  char ru[128], er[1024];
  rusage_json(ru, sizeof ru);
  errors_json(er, sizeof er);
  int ok = got == bytes && extra == 0;
  printf("{\"ok\":%s,\"exact\":%s,\"bytes\":%llu,\"expected\":%llu,\"holdSeconds\":%.3f,\"readSeconds\":%.4f,\"mbps\":%.2f,%s,%s}\n",
         ok ? "true" : "false", ok ? "true" : "false", (unsigned long long)(got + extra), (unsigned long long)bytes, held_s, t,
         t > 0 ? (double)got / 1e6 / t : 0.0, ru, er);
  return ok ? 0 : 1;
}

/* ------------------------------------------------------------------- udp */

/*
 * SOCKS5 UDP ASSOCIATE round trips (RFC 1928 section 7). Each association is
 * a TCP control connection plus a UDP socket; datagrams carry the 10-byte
 * header (ATYP IPv4 127.0.0.1, --dest: the target's UDP echo port) and a
 * payload of --size bytes: a u64 sequence number, the association's index,
 * then fixed bytes. --window datagrams are kept in flight per association;
 * one not echoed within --timeout-ms is counted lost and replaced by a new
 * one, so the window stays full (UDP may drop: that is counted, never an
 * error). With --socks 0 the datagrams go to --connect (the echo itself)
 * without a header.
 */

struct uslot { uint64_t seq, t; uint32_t gen; int busy; };

struct assoc {
  int index, tcp, udp;
  struct sockaddr_in to; /* the relay (or the echo) */
  struct uslot *slots;
  long sent, echoed, lost, late;
};

static int u_window, u_size;
static int u_dest_port;
static long u_bad; /* malformed or corrupted replies */

static int u_send(struct assoc *a, int slot, uint64_t t) {
  struct uslot *s = &a->slots[slot];
  s->seq = (uint64_t)s->gen++ * (uint64_t)u_window + (uint64_t)slot;
  s->t = t;
  s->busy = 1;
  unsigned char d[600];
  size_t h = 0;
  if (g_socks) {
    unsigned char hdr[10] = {0, 0, 0, 1, 127, 0, 0, 1, (unsigned char)(u_dest_port >> 8), (unsigned char)u_dest_port};
    memcpy(d, hdr, 10);
    h = 10;
  }
  memcpy(d + h, g_data, (size_t)u_size);
  put_u64(d + h, s->seq);
  d[h + 8] = (unsigned char)a->index;
  a->sent++;
  ssize_t w = sendto(a->udp, d, h + (size_t)u_size, MSG_DONTWAIT, (struct sockaddr *)&a->to, sizeof a->to);
  if (w < 0 && errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED) {
    tally("udp send: %s", strerror(errno));
    return -1;
  }
  return 0; /* a datagram the kernel refused is lost like any other */
}

/* Sets up association i; returns 0 or -1 (tallied). */
static int u_setup(struct assoc *a, int i) {
  a->index = i;
  a->tcp = -1;
  a->slots = calloc((size_t)u_window, sizeof *a->slots);
  a->udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in me = loopback(0);
  if (a->udp < 0 || bind(a->udp, (struct sockaddr *)&me, sizeof me)) { tally("udp socket: %s", strerror(errno)); return -1; }
  socklen_t len = sizeof me;
  getsockname(a->udp, (struct sockaddr *)&me, &len);
  if (!g_socks) {
    a->to = loopback(g_connect_port);
    return 0;
  }
  /* The request names the address our datagrams will come from. */
  unsigned char req[10] = {5, 3, 0, 1, 127, 0, 0, 1, (unsigned char)(ntohs(me.sin_port) >> 8), (unsigned char)ntohs(me.sin_port)};
  unsigned char reply[600];
  a->tcp = dial_socks(30, req, sizeof req, reply);
  if (a->tcp < 0) return -1;
  if (reply[3] != 1) { tally("udp associate: relay address type %d", reply[3]); return -1; }
  memset(&a->to, 0, sizeof a->to);
  a->to.sin_family = AF_INET;
  memcpy(&a->to.sin_addr, reply + 4, 4);
  memcpy(&a->to.sin_port, reply + 8, 2);
  if (a->to.sin_addr.s_addr == htonl(INADDR_ANY)) a->to.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* "the address you reached me on" */
  /* The control connection stays open and quiet: an event on it means the association ended. */
  struct timeval tv = {0};
  setsockopt(a->tcp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  fcntl(a->tcp, F_SETFL, fcntl(a->tcp, F_GETFL) | O_NONBLOCK);
  return 0;
}

/* Handles one reply datagram; returns 1 when it completed a round trip. */
static int u_reply(struct assoc *a, const unsigned char *d, ssize_t n, uint64_t t, struct samples *lat, uint64_t measure,
                   uint64_t deadline, long *counted) {
  ssize_t h = 0;
  if (g_socks) {
    if (n < 10 || d[0] || d[1] || d[2]) { u_bad++; tally("udp reply: bad header"); return 0; }
    h = d[3] == 1 ? 10 : d[3] == 4 ? 22 : d[3] == 3 ? 7 + d[4] : -1;
    if (h < 0 || n < h) { u_bad++; tally("udp reply: bad address type"); return 0; }
  }
  if (n - h != u_size || memcmp(d + h + 9, g_data + 9, (size_t)u_size - 9) != 0 || d[h + 8] != (unsigned char)a->index) {
    u_bad++;
    tally("udp reply: payload mismatch");
    return 0;
  }
  uint64_t seq = get_u64(d + h);
  int slot = (int)(seq % (uint64_t)u_window);
  struct uslot *s = &a->slots[slot];
  if (!s->busy || s->seq != seq) { a->late++; return 0; } /* already counted lost (or a duplicate) */
  s->busy = 0;
  a->echoed++;
  if (s->t >= measure && t <= deadline) { sample(lat, t - s->t); (*counted)++; }
  if (t < deadline) u_send(a, slot, t);
  return 1;
}

static int cmd_udp(void) {
  int n = (int)opt_num("assocs", 1);
  double seconds = opt_num("seconds", 2);
  uint64_t warmup = (uint64_t)(opt_num("warmup-ms", 100) * 1e6);
  uint64_t timeout = (uint64_t)(opt_num("timeout-ms", 100) * 1e6);
  u_window = (int)opt_num("window", 32);
  u_size = (int)opt_num("size", 64);
  u_dest_port = g_dest_port;
  if (n < 1 || n > 64) die("--assocs 1..64");
  if (u_window < 1 || u_window > 4096) die("--window 1..4096");
  if (u_size < 16 || u_size > 512) die("--size 16..512");
  struct assoc *as = calloc((size_t)n, sizeof *as);
  int ep = epoll_create1(0);
  int setup_failed = 0;
  for (int i = 0; i < n; i++) {
    if (u_setup(&as[i], i)) { setup_failed = 1; break; }
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, as[i].udp, &e);
    if (as[i].tcp >= 0) {
      struct epoll_event c = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)i | (1ull << 32)};
      epoll_ctl(ep, EPOLL_CTL_ADD, as[i].tcp, &c);
    }
  }
  struct samples lat = {0};
  long counted = 0;
  int control_closed = 0;
  uint64_t start = now_ns(), measure = start + warmup, deadline = measure + (uint64_t)(seconds * 1e9);
  if (!setup_failed) {
    for (int i = 0; i < n; i++)
      for (int k = 0; k < u_window; k++) u_send(&as[i], k, start);
  }
  unsigned char d[2048];
  struct epoll_event evs[64];
  uint64_t last_sweep = start;
  /* Until the deadline; then until every datagram in flight is back or timed out. */
  while (!setup_failed && !control_closed) {
    uint64_t t = now_ns();
    int busy = 0;
    if (t - last_sweep >= timeout / 4 || t >= deadline) {
      last_sweep = t;
      for (int i = 0; i < n; i++) {
        for (int k = 0; k < u_window; k++) {
          struct uslot *s = &as[i].slots[k];
          if (!s->busy) continue;
          if (t - s->t > timeout) {
            s->busy = 0;
            as[i].lost++;
            if (t < deadline) u_send(&as[i], k, t); /* keep the window full */
          }
          busy += s->busy;
        }
      }
      if (t >= deadline && busy == 0) break;
    }
    if (t > deadline + 2 * timeout + 1000000000ull) break;
    int m = epoll_wait(ep, evs, 64, 5);
    for (int e = 0; e < m; e++) {
      uint64_t tag = evs[e].data.u64;
      struct assoc *a = &as[tag & 0xffffffffu];
      if (tag >> 32) { /* the control connection: EOF or data means the association is over */
        tally("udp: control connection closed by the server");
        control_closed = 1;
        continue;
      }
      for (int k = 0; k < 64; k++) {
        ssize_t r = recv(a->udp, d, sizeof d, MSG_DONTWAIT);
        if (r < 0) break;
        u_reply(a, d, r, now_ns(), &lat, measure, deadline, &counted);
      }
    }
  }
  long sent = 0, echoed = 0, lost = 0, late = 0;
  for (int i = 0; i < n; i++) {
    for (int k = 0; k < u_window && as[i].slots; k++) if (as[i].slots[k].busy) as[i].lost++; /* never came back */
    sent += as[i].sent;
    echoed += as[i].echoed;
    lost += as[i].lost;
    late += as[i].late;
    if (as[i].tcp >= 0) close(as[i].tcp);
    if (as[i].udp >= 0) close(as[i].udp);
  }
  char ru[128], er[1024], pc[256];
  rusage_json(ru, sizeof ru);
  errors_json(er, sizeof er);
  percentiles_json(&lat, pc, sizeof pc);
  int ok = !setup_failed && !control_closed && u_bad == 0 && counted > 0;
  printf("{\"ok\":%s,\"assocs\":%d,\"window\":%d,\"size\":%d,\"roundTrips\":%ld,\"seconds\":%.4f,\"rate\":%.1f,\"sent\":%ld,"
         "\"echoed\":%ld,\"lost\":%ld,\"late\":%ld,%s,%s,%s}\n",
         ok ? "true" : "false", n, u_window, u_size, counted, seconds, (double)counted / seconds, sent, echoed, lost, late, pc, ru,
         er);
  return ok ? 0 : 1;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
  g_argc = argc;
  g_argv = argv;
  if (argc < 2) die("usage: sockbench target|upload|download|handshake|latency|idle|stall|udp [--key value ...]");
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *cmd = argv[1];
  if (strcmp(cmd, "target") == 0) return cmd_target();
  init_data();
  g_connect_port = (int)opt_num("connect", 0);
  g_dest_port = (int)opt_num("dest", 0);
  g_socks = (int)opt_num("socks", 1);
  g_user = opt_str("user", NULL);
  g_pass = opt_str("pass", "");
  g_dest_name = opt_str("dest-name", NULL);
  if (g_dest_name && (strlen(g_dest_name) == 0 || strlen(g_dest_name) > 255)) die("--dest-name must be 1-255 bytes");
  if (g_connect_port <= 0) die("--connect PORT is required");
  if (g_socks && g_dest_port <= 0) die("--dest PORT is required with --socks 1");
  if (g_user && (strlen(g_user) > 255 || strlen(g_pass) > 255)) die("user/pass too long");
  if (strcmp(cmd, "upload") == 0) return cmd_bulk(0);
  if (strcmp(cmd, "download") == 0) return cmd_bulk(1);
  if (strcmp(cmd, "handshake") == 0) return cmd_handshake();
  if (strcmp(cmd, "latency") == 0) return cmd_latency();
  if (strcmp(cmd, "idle") == 0) return cmd_idle();
  if (strcmp(cmd, "stall") == 0) return cmd_stall();
  if (strcmp(cmd, "udp") == 0) return cmd_udp();
  die("unknown command %s", cmd);
  return 2;
}

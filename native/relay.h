/*
 * What the relay thread (splice.c) and the native UDP relay (udp.c) share:
 * the epoll registration every watched socket carries, the thread itself, and
 * the hooks each file gives the other.
 */
#ifndef SOCKSGATE_RELAY_H
#define SOCKSGATE_RELAY_H

#define NAPI_VERSION 8
#include <node_api.h>
#include <stdint.h>

typedef struct pair pair_t;

/*
 * What an epoll event points at. `pair` set: one side of a spliced pair, or,
 * with side WATCH_ATTEMPT, one of the connects racing for a name's
 * destination (splice.c). `pair` NULL: a listener (native handshakes), or,
 * with side WATCH_UDP, a socket of a UDP association (udp.c).
 */
typedef struct {
  pair_t *pair;
  int side;     /* 0: client socket, 1: destination socket; WATCH_UDP: see above */
  int writable; /* EPOLLOUT is watched: only after a write would have blocked */
} watch_t;

#define WATCH_UDP 2
#define WATCH_ATTEMPT 3

/* For functions called from JavaScript: a failed N-API call throws and returns. */
#define CHECK(call)                                \
  do {                                             \
    if ((call) != napi_ok) {                       \
      napi_throw_error(env, NULL, "napi: " #call); \
      return NULL;                                 \
    }                                              \
  } while (0)

/* splice.c: the process's epoll instance, with its relay thread started (0), or an errno. */
int relay_thread_ready(int *epoll_out);

/* udp.c's counters, read by stats(): datagrams the relay thread sent itself, and handed to JavaScript. */
extern uint64_t udp_native_datagrams, udp_handed_to_js;

/* udp.c, called by the relay thread. */
void udp_event(watch_t *w, uint32_t events);
/* Before each wait for events: no event from an earlier wait still points at what this frees. */
void udp_before_wait(void);
/* udp.c's functions for JavaScript, added to the module's exports. */
napi_status udp_define(napi_env env, napi_value exports);

#endif

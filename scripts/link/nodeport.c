/* nodeport.so: an LD_PRELOAD shim for the emulated cluster's links of a set speed
 * (scripts/cluster.sh up N --link RATE). Every fake node shares the machine's loopback, so
 * `tc` can tell nodes apart only by TCP ports: cluster.sh gives node K a block of ports, its Open
 * MPI listeners take the block's first ports (btl_tcp_port_min_v4 in the node's MCA file), and
 * this shim binds each outgoing TCP connection to 127.0.0.0/8 to a free port of the rest of the
 * block before connecting. Then a packet's source port names the node that sent it and its
 * destination port the node it goes to, and cluster.sh's filters hold each node's upload and
 * download to the link's rate.
 *
 * The block comes from the file $PARTRAIN_CLUSTER/etc/this-node ("FIRST LAST"), which the
 * node's mount namespace binds over with its own (outside a node the file says "0 0" and the
 * shim does nothing). A connection whose bind fails (every port of the block in use) goes out
 * from an ephemeral port as before: unshaped, never broken. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int first_port = -1, last_port = -1, next_port = 0;

static void read_block(void) {
  const char *dir = getenv("PARTRAIN_CLUSTER");
  char path[4096];
  FILE *f;
  first_port = last_port = 0;
  if (!dir || snprintf(path, sizeof path, "%s/etc/this-node", dir) >= (int)sizeof path) return;
  if (!(f = fopen(path, "r"))) return;
  if (fscanf(f, "%d %d", &first_port, &last_port) != 2) first_port = last_port = 0;
  fclose(f);
  next_port = first_port;
}

static int is_tcp(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

/* Binds fd to the next free port of the node's block, on `ip` (network order). 0 on success. */
static int bind_in_block(int fd, in_addr_t ip,
                         int (*real_bind)(int, const struct sockaddr *, socklen_t)) {
  int one = 1, span = last_port - first_port + 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  for (int i = 0; i < span; i++) {
    struct sockaddr_in me;
    memset(&me, 0, sizeof me);
    me.sin_family = AF_INET;
    me.sin_addr.s_addr = ip;
    me.sin_port = htons((unsigned short)next_port);
    next_port = next_port >= last_port ? first_port : next_port + 1;
    if (real_bind(fd, (struct sockaddr *)&me, sizeof me) == 0) return 0;
  }
  return -1;
}

static int (*real_bind_fn(void))(int, const struct sockaddr *, socklen_t) {
  static int (*real_bind)(int, const struct sockaddr *, socklen_t);
  if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
  if (first_port < 0) read_block();
  return real_bind;
}

/* Open MPI binds its outgoing sockets to the interface's address with port 0 before it
 * connects: such a bind takes a port of the block instead of an ephemeral one. */
int bind(int fd, const struct sockaddr *addr, socklen_t addrlen) {
  int (*real_bind)(int, const struct sockaddr *, socklen_t) = real_bind_fn();
  const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
  if (first_port > 0 && addr && addr->sa_family == AF_INET && in->sin_port == 0 && is_tcp(fd)) {
    int saved = errno;
    if (bind_in_block(fd, in->sin_addr.s_addr, real_bind) == 0) return 0;
    errno = saved;
  }
  return real_bind(fd, addr, addrlen);
}

/* A connection to loopback from a socket nobody bound: bound to a port of the block first. */
int connect(int fd, const struct sockaddr *addr, socklen_t addrlen) {
  static int (*real_connect)(int, const struct sockaddr *, socklen_t);
  int (*real_bind)(int, const struct sockaddr *, socklen_t) = real_bind_fn();
  struct sockaddr_in me;
  socklen_t mlen = sizeof me;
  if (!real_connect) real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  if (first_port > 0 && addr && addr->sa_family == AF_INET &&
      (ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr) >> 24) == 127 && is_tcp(fd) &&
      getsockname(fd, (struct sockaddr *)&me, &mlen) == 0 && me.sin_family == AF_INET && me.sin_port == 0) {
    int saved = errno;
    bind_in_block(fd, htonl(INADDR_LOOPBACK), real_bind);
    errno = saved;
  }
  return real_connect(fd, addr, addrlen);
}

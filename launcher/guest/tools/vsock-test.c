/*
 * vsock-test: the guest side of the virtio-ts vsock tests (busybox has no AF_VSOCK).
 * Built static by launcher/guest/build.sh into the test guest as /bin/vsock-test.
 *
 * Every byte stream is the xorshift32 pattern of a seed (4 bytes per step, little-endian),
 * and every report carries the CRC-32 (IEEE) of what was sent or received, so the host can
 * check both ends with the same two functions. Reports are single lines on stdout:
 *
 *   vsock-test send CID PORT BYTES [SEED]
 *       connect (stream), write BYTES of pattern(SEED) in 64 KiB writes, shutdown(SHUT_WR),
 *       then read the reply until EOF.
 *       -> "VSOCK-SEND sent=N crc=X reply=M replycrc=Y ms=T"
 *   vsock-test recv CID PORT [REQUEST]
 *       connect (stream), write REQUEST (if given) and shutdown(SHUT_WR), read until EOF.
 *       -> "VSOCK-RECV bytes=N crc=X ms=T"
 *   vsock-test serve PORT MODE [BYTES [SEED]]
 *       accept one stream connection on PORT; MODE recv: read until EOF and report;
 *       echo: send back everything until EOF, then close; send: write BYTES then close.
 *       Prints "VSOCK-LISTENING port=P" once listening.
 *       -> "VSOCK-SERVE mode=M bytes=N crc=X ms=T"
 *   vsock-test many CID PORT CONNS BYTES
 *       open CONNS stream connections at once (non-blocking, poll), each writes BYTES of
 *       pattern(its index + 1), shuts down writing, and reads its echo until EOF; the echo
 *       must be the bytes sent.
 *       -> "VSOCK-MANY ok=K failed=F"
 *   vsock-test refused CID PORT
 *       connect must fail with ECONNRESET or ECONNREFUSED.
 *       -> "VSOCK-REFUSED errno=NAME"
 *   vsock-test seq CID PORT SIZE...
 *       connect (seqpacket), send one message per SIZE (filled with its index), shutdown
 *       writing, then receive messages until EOF.
 *       -> "VSOCK-SEQ sent=A,B,... recv=C,D,... eor=E"
 *
 * Exit status 0 on success, 1 on failure (with "VSOCK-ERROR what: strerror" on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define CHUNK 65536

static uint32_t crc_table[256];

static void crc_init(void) {
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* Running CRC-32: start with 0, feed bytes, the value is the CRC so far. */
static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n) {
	crc = ~crc;
	while (n--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* The pattern: xorshift32 from a non-zero seed, 4 little-endian bytes per step. */
struct pattern {
	uint32_t x;
	uint8_t word[4];
	int left;
};

static void pattern_init(struct pattern *p, uint32_t seed) {
	p->x = seed ? seed : 1;
	p->left = 0;
}

static void pattern_fill(struct pattern *p, uint8_t *buf, size_t n) {
	for (size_t i = 0; i < n; i++) {
		if (p->left == 0) {
			uint32_t x = p->x;
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			p->x = x;
			p->word[0] = x;
			p->word[1] = x >> 8;
			p->word[2] = x >> 16;
			p->word[3] = x >> 24;
			p->left = 4;
		}
		buf[i] = p->word[4 - p->left--];
	}
}

static long long now_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int die(const char *what) {
	fprintf(stderr, "VSOCK-ERROR %s: %s\n", what, strerror(errno));
	return 1;
}

static int vsock_connect(unsigned cid, unsigned port, int type) {
	int fd = socket(AF_VSOCK, type | SOCK_CLOEXEC, 0);
	if (fd < 0) return -1;
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read until EOF; returns the byte count (or -1) and the CRC in *crc. */
static long long read_all(int fd, uint32_t *crc) {
	static uint8_t buf[CHUNK];
	long long total = 0;
	*crc = 0;
	for (;;) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		if (r == 0) return total;
		*crc = crc_update(*crc, buf, (size_t)r);
		total += r;
	}
}

static int send_pattern(int fd, long long bytes, uint32_t seed, uint32_t *crc) {
	static uint8_t buf[CHUNK];
	struct pattern p;
	pattern_init(&p, seed);
	*crc = 0;
	while (bytes > 0) {
		size_t n = bytes < CHUNK ? (size_t)bytes : CHUNK;
		pattern_fill(&p, buf, n);
		*crc = crc_update(*crc, buf, n);
		if (write_all(fd, buf, n) < 0) return -1;
		bytes -= (long long)n;
	}
	return 0;
}

static int cmd_send(unsigned cid, unsigned port, long long bytes, uint32_t seed) {
	long long t0 = now_ms();
	int fd = vsock_connect(cid, port, SOCK_STREAM);
	if (fd < 0) return die("connect");
	uint32_t crc, rcrc;
	if (send_pattern(fd, bytes, seed, &crc) < 0) return die("write");
	if (shutdown(fd, SHUT_WR) < 0) return die("shutdown");
	long long got = read_all(fd, &rcrc);
	if (got < 0) return die("read");
	close(fd);
	printf("VSOCK-SEND sent=%lld crc=%08x reply=%lld replycrc=%08x ms=%lld\n", bytes, crc, got,
	       rcrc, now_ms() - t0);
	return 0;
}

static int cmd_recv(unsigned cid, unsigned port, const char *request) {
	long long t0 = now_ms();
	int fd = vsock_connect(cid, port, SOCK_STREAM);
	if (fd < 0) return die("connect");
	if (request != NULL) {
		if (write_all(fd, (const uint8_t *)request, strlen(request)) < 0) return die("write");
		if (shutdown(fd, SHUT_WR) < 0) return die("shutdown");
	}
	uint32_t crc;
	long long got = read_all(fd, &crc);
	if (got < 0) return die("read");
	close(fd);
	printf("VSOCK-RECV bytes=%lld crc=%08x ms=%lld\n", got, crc, now_ms() - t0);
	return 0;
}

static int cmd_serve(unsigned port, const char *mode, long long bytes, uint32_t seed) {
	int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0) return die("socket");
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
	if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) return die("bind");
	if (listen(l, 16) < 0) return die("listen");
	printf("VSOCK-LISTENING port=%u\n", port);
	fflush(stdout);
	int fd = accept(l, NULL, NULL);
	if (fd < 0) return die("accept");
	long long t0 = now_ms();
	uint32_t crc = 0;
	long long n = 0;
	if (strcmp(mode, "recv") == 0) {
		n = read_all(fd, &crc);
		if (n < 0) return die("read");
	} else if (strcmp(mode, "echo") == 0) {
		static uint8_t buf[CHUNK];
		for (;;) {
			ssize_t r = read(fd, buf, sizeof buf);
			if (r < 0 && errno == EINTR) continue;
			if (r < 0) return die("read");
			if (r == 0) break;
			crc = crc_update(crc, buf, (size_t)r);
			n += r;
			if (write_all(fd, buf, (size_t)r) < 0) return die("write");
		}
	} else if (strcmp(mode, "send") == 0) {
		if (send_pattern(fd, bytes, seed, &crc) < 0) return die("write");
		n = bytes;
	} else {
		fprintf(stderr, "VSOCK-ERROR unknown mode %s\n", mode);
		return 1;
	}
	close(fd);
	close(l);
	printf("VSOCK-SERVE mode=%s bytes=%lld crc=%08x ms=%lld\n", mode, n, crc, now_ms() - t0);
	return 0;
}

struct conn {
	int fd;
	int state; /* 0 connecting, 1 writing, 2 reading, 3 done, 4 failed */
	long long sent, got;
	struct pattern out, in;
};

static int cmd_many(unsigned cid, unsigned port, int count, long long bytes) {
	struct conn *c = calloc((size_t)count, sizeof *c);
	struct pollfd *pfd = calloc((size_t)count, sizeof *pfd);
	if (c == NULL || pfd == NULL) return die("calloc");
	for (int i = 0; i < count; i++) {
		c[i].fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (c[i].fd < 0) return die("socket");
		pattern_init(&c[i].out, (uint32_t)i + 1);
		pattern_init(&c[i].in, (uint32_t)i + 1);
		struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
		if (connect(c[i].fd, (struct sockaddr *)&a, sizeof a) == 0) {
			c[i].state = 1;
		} else if (errno == EINPROGRESS) {
			c[i].state = 0;
		} else {
			fprintf(stderr, "VSOCK-ERROR connect %d: %s\n", i, strerror(errno));
			c[i].state = 4;
		}
	}
	int active = count;
	uint8_t buf[4096], want[4096];
	while (active > 0) {
		int n = 0;
		for (int i = 0; i < count; i++) {
			pfd[i].fd = c[i].state >= 3 ? -1 : c[i].fd;
			pfd[i].events = c[i].state == 2 ? POLLIN : POLLOUT;
			pfd[i].revents = 0;
		}
		n = poll(pfd, (nfds_t)count, 60000);
		if (n < 0 && errno == EINTR) continue;
		if (n <= 0) {
			fprintf(stderr, "VSOCK-ERROR poll: %s\n", n == 0 ? "timeout" : strerror(errno));
			break;
		}
		for (int i = 0; i < count; i++) {
			struct conn *k = &c[i];
			if (pfd[i].revents == 0 || k->state >= 3) continue;
			if (k->state == 0) {
				int err = 0;
				socklen_t len = sizeof err;
				getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len);
				if (err != 0) {
					fprintf(stderr, "VSOCK-ERROR connect %d: %s\n", i, strerror(err));
					k->state = 4;
					active--;
					continue;
				}
				k->state = 1;
			}
			if (k->state == 1) {
				long long left = bytes - k->sent;
				size_t m = left < (long long)sizeof buf ? (size_t)left : sizeof buf;
				if (m > 0) {
					struct pattern save = k->out;
					pattern_fill(&k->out, buf, m);
					ssize_t w = write(k->fd, buf, m);
					if (w < 0) {
						k->out = save;
						if (errno == EAGAIN) continue;
						fprintf(stderr, "VSOCK-ERROR write %d: %s\n", i, strerror(errno));
						k->state = 4;
						active--;
						continue;
					}
					/* Rewind the pattern to what was written. */
					k->out = save;
					pattern_fill(&k->out, buf, (size_t)w);
					k->sent += w;
				}
				if (k->sent == bytes) {
					shutdown(k->fd, SHUT_WR);
					k->state = 2;
				}
				continue;
			}
			if (k->state == 2) {
				ssize_t r = read(k->fd, buf, sizeof buf);
				if (r < 0) {
					if (errno == EAGAIN) continue;
					fprintf(stderr, "VSOCK-ERROR read %d: %s\n", i, strerror(errno));
					k->state = 4;
					active--;
					continue;
				}
				if (r == 0) {
					k->state = k->got == bytes ? 3 : 4;
					if (k->state == 4) fprintf(stderr, "VSOCK-ERROR short echo %d: %lld\n", i, k->got);
					active--;
					continue;
				}
				pattern_fill(&k->in, want, (size_t)r);
				if (memcmp(buf, want, (size_t)r) != 0 || k->got + r > bytes) {
					fprintf(stderr, "VSOCK-ERROR wrong echo on %d at %lld\n", i, k->got);
					k->state = 4;
					active--;
					continue;
				}
				k->got += r;
			}
		}
	}
	int ok = 0, failed = 0;
	for (int i = 0; i < count; i++) {
		if (c[i].state == 3) ok++;
		else failed++;
		close(c[i].fd);
	}
	printf("VSOCK-MANY ok=%d failed=%d\n", ok, failed);
	return failed == 0 ? 0 : 1;
}

static int cmd_refused(unsigned cid, unsigned port) {
	int fd = vsock_connect(cid, port, SOCK_STREAM);
	if (fd >= 0) {
		fprintf(stderr, "VSOCK-ERROR connect succeeded\n");
		return 1;
	}
	const char *name = errno == ECONNRESET ? "ECONNRESET" : errno == ECONNREFUSED ? "ECONNREFUSED"
		: errno == ETIMEDOUT ? "ETIMEDOUT" : "other";
	printf("VSOCK-REFUSED errno=%s\n", name);
	return errno == ECONNRESET || errno == ECONNREFUSED ? 0 : 1;
}

static int cmd_seq(unsigned cid, unsigned port, int n, char **sizes) {
	int fd = vsock_connect(cid, port, SOCK_SEQPACKET);
	if (fd < 0) return die("connect");
	static uint8_t buf[1 << 20];
	printf("VSOCK-SEQ sent=");
	for (int i = 0; i < n; i++) {
		size_t len = (size_t)strtoul(sizes[i], NULL, 10);
		if (len > sizeof buf) len = sizeof buf;
		memset(buf, i + 1, len);
		if (send(fd, buf, len, 0) != (ssize_t)len) return die("send");
		printf("%s%zu", i ? "," : "", len);
	}
	if (shutdown(fd, SHUT_WR) < 0) return die("shutdown");
	printf(" recv=");
	int eor = 0, count = 0;
	for (;;) {
		struct iovec iov = {buf, sizeof buf};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t r = recvmsg(fd, &m, 0);
		if (r < 0) {
			if (errno == EINTR) continue;
			return die("recvmsg");
		}
		if (r == 0) break;
		/* Each message must be filled with one byte value. */
		for (ssize_t k = 1; k < r; k++) {
			if (buf[k] != buf[0]) {
				fprintf(stderr, "VSOCK-ERROR mixed message\n");
				return 1;
			}
		}
		if (m.msg_flags & MSG_EOR) eor++;
		printf("%s%zd", count++ ? "," : "", r);
	}
	printf(" eor=%d\n", eor);
	close(fd);
	return 0;
}

int main(int argc, char **argv) {
	crc_init();
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 5 && strcmp(argv[1], "send") == 0)
		return cmd_send((unsigned)atoi(argv[2]), (unsigned)strtoul(argv[3], NULL, 10),
		                atoll(argv[4]), argc > 5 ? (uint32_t)strtoul(argv[5], NULL, 10) : 1);
	if (argc >= 4 && strcmp(argv[1], "recv") == 0)
		return cmd_recv((unsigned)atoi(argv[2]), (unsigned)strtoul(argv[3], NULL, 10),
		                argc > 4 ? argv[4] : NULL);
	if (argc >= 4 && strcmp(argv[1], "serve") == 0)
		return cmd_serve((unsigned)strtoul(argv[2], NULL, 10), argv[3],
		                 argc > 4 ? atoll(argv[4]) : 0,
		                 argc > 5 ? (uint32_t)strtoul(argv[5], NULL, 10) : 1);
	if (argc == 6 && strcmp(argv[1], "many") == 0)
		return cmd_many((unsigned)atoi(argv[2]), (unsigned)strtoul(argv[3], NULL, 10),
		                atoi(argv[4]), atoll(argv[5]));
	if (argc == 4 && strcmp(argv[1], "refused") == 0)
		return cmd_refused((unsigned)atoi(argv[2]), (unsigned)strtoul(argv[3], NULL, 10));
	if (argc >= 5 && strcmp(argv[1], "seq") == 0)
		return cmd_seq((unsigned)atoi(argv[2]), (unsigned)strtoul(argv[3], NULL, 10), argc - 4,
		               argv + 4);
	fprintf(stderr, "usage: see the comment at the top of launcher/guest/tools/vsock-test.c\n");
	return 2;
}

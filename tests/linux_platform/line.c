/*
 * One line each way over a stream socket, for tests/linux_platform.rs.
 * Built static; runs in the guest (AF_VSOCK) and in the test host
 * (AF_UNIX, herd's hybrid-vsock side).
 *
 *   line listen-vsock PORT REPLY      accept one connection, print
 *                                     "line: got <line>", answer REPLY
 *   line connect-vsock CID PORT MSG   send MSG, print "line: got <reply>"
 *   line listen-unix PATH REPLY       as listen-vsock, on a Unix socket
 *   line connect-unix PATH PORT MSG   herd's convention: "CONNECT PORT\n",
 *                                     expect "OK ...", then as connect-vsock;
 *                                     prints "line: refused" on EOF instead
 *
 * Exit status 0 on success, 1 on any failure (with a "line: ..." message).
 */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what)
{
	printf("line: %s failed\n", what);
	perror("line");
	exit(1);
}

/* Reads up to '\n' (not stored); returns the length, -1 on EOF first. */
static int read_line(int fd, char *buf, int max)
{
	int n = 0;
	char c;
	for (;;) {
		ssize_t r = read(fd, &c, 1);
		if (r <= 0)
			return n ? n : -1;
		if (c == '\n' || n == max - 1)
			break;
		buf[n++] = c;
	}
	buf[n] = 0;
	return n;
}

static void say(int fd, const char *msg)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "%s\n", msg);
	if (write(fd, buf, n) != n)
		die("write");
}

static void converse_server(int lfd, const char *reply)
{
	if (listen(lfd, 1))
		die("listen");
	printf("line: listening\n");
	fflush(stdout);
	int fd = accept(lfd, 0, 0);
	if (fd < 0)
		die("accept");
	char buf[512];
	if (read_line(fd, buf, sizeof(buf)) < 0)
		die("read");
	printf("line: got %s\n", buf);
	say(fd, reply);
	close(fd);
}

static void converse_client(int fd, const char *msg)
{
	char buf[512];
	say(fd, msg);
	if (read_line(fd, buf, sizeof(buf)) < 0)
		die("read reply");
	printf("line: got %s\n", buf);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, 0, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "listen-vsock")) {
		int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
		struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
					 .svm_port = (unsigned)atoi(argv[2]) };
		if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)))
			die("vsock bind");
		converse_server(fd, argv[3]);
	} else if (argc == 5 && !strcmp(argv[1], "connect-vsock")) {
		int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
		struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = (unsigned)atoi(argv[2]),
					 .svm_port = (unsigned)atoi(argv[3]) };
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
			die("vsock connect");
		converse_client(fd, argv[4]);
	} else if (argc == 4 && !strcmp(argv[1], "listen-unix")) {
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		strncpy(a.sun_path, argv[2], sizeof(a.sun_path) - 1);
		unlink(argv[2]);
		if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)))
			die("unix bind");
		converse_server(fd, argv[3]);
	} else if (argc == 5 && !strcmp(argv[1], "connect-unix")) {
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		strncpy(a.sun_path, argv[2], sizeof(a.sun_path) - 1);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
			die("unix connect");
		char buf[512];
		snprintf(buf, sizeof(buf), "CONNECT %s", argv[3]);
		say(fd, buf);
		if (read_line(fd, buf, sizeof(buf)) < 0) {
			printf("line: refused\n");
			return 0;
		}
		if (strncmp(buf, "OK ", 3)) {
			printf("line: unexpected answer %s\n", buf);
			return 1;
		}
		printf("line: connected %s\n", buf);
		converse_client(fd, argv[4]);
	} else {
		fprintf(stderr, "usage: see the comment at the top of line.c\n");
		return 2;
	}
	return 0;
}

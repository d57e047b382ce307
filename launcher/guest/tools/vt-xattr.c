/*
 * vt-xattr: extended attributes from the test guest's shell (busybox has no setfattr).
 *
 *   vt-xattr set  FILE NAME VALUE    setxattr(2)     (lset: lsetxattr, on a link itself)
 *   vt-xattr get  FILE NAME          getxattr(2)     (lget)  prints the value
 *   vt-xattr list FILE               listxattr(2)    (llist) prints one name per line
 *   vt-xattr rm   FILE NAME          removexattr(2)  (lrm)
 *
 * On failure it prints "vt-xattr: <call>: errno=<n> (<text>)" to stderr and exits 1, so a
 * test can tell EPERM from ENODATA. Built static by launcher/guest/build.sh.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

static int fail(const char *call) {
  int e = errno;
  fprintf(stderr, "vt-xattr: %s: errno=%d (%s)\n", call, e, strerror(e));
  return 1;
}

static int usage(void) {
  fputs("usage: vt-xattr set|lset FILE NAME VALUE | get|lget FILE NAME | "
        "list|llist FILE | rm|lrm FILE NAME\n", stderr);
  return 2;
}

int main(int argc, char **argv) {
  static char buf[65536];
  if (argc < 3) return usage();
  const char *op = argv[1], *file = argv[2];
  int nofollow = op[0] == 'l' && strcmp(op, "list") != 0;
  if (nofollow) op++;
  if (strcmp(op, "set") == 0 && argc == 5) {
    size_t n = strlen(argv[4]);
    int r = nofollow ? lsetxattr(file, argv[3], argv[4], n, 0) : setxattr(file, argv[3], argv[4], n, 0);
    return r < 0 ? fail("setxattr") : 0;
  }
  if (strcmp(op, "get") == 0 && argc == 4) {
    ssize_t n = nofollow ? lgetxattr(file, argv[3], buf, sizeof buf) : getxattr(file, argv[3], buf, sizeof buf);
    if (n < 0) return fail("getxattr");
    fwrite(buf, 1, (size_t)n, stdout);
    putchar('\n');
    return 0;
  }
  if (strcmp(op, "list") == 0 && argc == 3) {
    ssize_t n = nofollow ? llistxattr(file, buf, sizeof buf) : listxattr(file, buf, sizeof buf);
    if (n < 0) return fail("listxattr");
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1) puts(buf + i);
    return 0;
  }
  if (strcmp(op, "rm") == 0 && argc == 4) {
    int r = nofollow ? lremovexattr(file, argv[3]) : removexattr(file, argv[3]);
    return r < 0 ? fail("removexattr") : 0;
  }
  return usage();
}

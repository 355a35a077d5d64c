/* Process identity for lock owners: (pid, start time) names a process
 * uniquely for the life of a boot, so a lock whose owner has died can be
 * told apart from one whose pid was reused.  Linux /proc only. */
#ifndef FASTLIMIT_PROC_H
#define FASTLIMIT_PROC_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define FL_PROC_ALIVE 1
#define FL_PROC_DEAD 0

/* Reads state and start time (field 22, clock ticks since boot) of pid.
 * Returns 0 on success, -1 if the process does not exist, -2 if unknown. */
static int fl_proc_stat(long pid, char *state, uint64_t *start) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -1 : -2;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -2;
    buf[n] = '\0';
    /* the command name may hold spaces and parentheses: fields start after
       the last ')' */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -2;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -2;
        p++;
    }
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    *start = v;
    return 0;
}

/* 1 if the process (pid, start) still runs, 0 if it is gone (exited,
 * a zombie, or its pid now names another process). */
static int fl_proc_alive(long pid, uint64_t start, uint64_t start_mask) {
    char state = '?';
    uint64_t s = 0;
    int r = fl_proc_stat(pid, &state, &s);
    if (r == -1)
        return FL_PROC_DEAD;
    if (r == -2) /* no usable /proc: fall back to a signal probe */
        return (kill((pid_t)pid, 0) == 0 || errno != ESRCH) ? FL_PROC_ALIVE : FL_PROC_DEAD;
    if (state == 'Z' || state == 'X')
        return FL_PROC_DEAD;
    return (s & start_mask) == start ? FL_PROC_ALIVE : FL_PROC_DEAD;
}

#endif

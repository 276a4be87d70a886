/* Liveness through fcntl open-file-description (OFD) locks on single bytes of the segment file.
 * The kernel releases them when the holder's file is closed, which includes death by kill -9,
 * and they name no pid, so pid reuse cannot fake a live peer. Byte numbers: _layout.h. */
#ifndef SHMPIPE_LOCKS_H
#define SHMPIPE_LOCKS_H

#include <errno.h>
#include <fcntl.h>
#include <string.h>

static inline void shm_lock_fill(struct flock *fl, short type, long long byte) {
    memset(fl, 0, sizeof(*fl));
    fl->l_type = type;
    fl->l_whence = SEEK_SET;
    fl->l_start = byte;
    fl->l_len = 1;
}

/* 0: taken. Otherwise the errno (EAGAIN/EACCES: someone else holds it). */
static inline int shm_lock_try(int fd, long long byte, int exclusive) {
    struct flock fl;
    shm_lock_fill(&fl, exclusive ? F_WRLCK : F_RDLCK, byte);
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

static inline int shm_lock_release(int fd, long long byte) {
    struct flock fl;
    shm_lock_fill(&fl, F_UNLCK, byte);
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

/* 1: some other open file description holds a lock on the byte; 0: none; -errno on failure.
 * Our own locks never conflict with us, so callers track their own roles themselves. */
static inline int shm_lock_held_elsewhere(int fd, long long byte) {
    struct flock fl;
    shm_lock_fill(&fl, F_WRLCK, byte);
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -errno;
    return fl.l_type != F_UNLCK;
}

#endif

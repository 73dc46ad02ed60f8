# Extern declarations for POSIX directory listing (dirent.h, fcntl.h, sys/stat.h, unistd.h)
# and the GCC/Clang atomic add used to hand out work. Declarations only.


cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass

    struct dirent:
        unsigned char d_type
        char d_name[256]

    enum:
        DT_UNKNOWN
        DT_REG
        DT_DIR
        DT_LNK

    DIR *fdopendir(int fd)
    dirent *readdir(DIR *dirp)
    int closedir(DIR *dirp)
    int dirfd(DIR *dirp)


cdef extern from "<fcntl.h>" nogil:
    enum:
        O_RDONLY
        O_DIRECTORY
        O_CLOEXEC
        AT_SYMLINK_NOFOLLOW

    int openat(int dirfd, const char *path, int flags, ...)


cdef extern from "<sys/stat.h>" nogil:
    ctypedef unsigned int mode_t

    struct stat:
        mode_t st_mode

    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    bint S_ISREG(mode_t m)
    bint S_ISDIR(mode_t m)


cdef extern from "<unistd.h>" nogil:
    int close(int fd)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        ENOENT
        ENOTDIR


cdef extern from * nogil:
    """
    static inline long ds_atomic_next(long *p) {
        return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED);
    }
    """
    long ds_atomic_next(long *p)

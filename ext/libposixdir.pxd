# Extern declarations for POSIX directory listing and plain file I/O (dirent.h, fcntl.h,
# sys/stat.h, unistd.h)
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
        O_WRONLY
        O_CREAT
        O_APPEND
        O_DIRECTORY
        O_CLOEXEC
        AT_SYMLINK_NOFOLLOW

    int openat(int dirfd, const char *path, int flags, ...)


cdef extern from "<sys/stat.h>" nogil:
    ctypedef unsigned int mode_t

    ctypedef long off_t

    struct stat:
        mode_t st_mode
        off_t st_size

    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    int fstat(int fd, stat *buf)
    bint S_ISREG(mode_t m)
    bint S_ISDIR(mode_t m)


cdef extern from "<unistd.h>" nogil:
    ctypedef long ssize_t
    int close(int fd)
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        ENOENT
        ENOTDIR
        EINTR
        ENOMEM


cdef extern from * nogil:
    """
    static inline long ds_atomic_next(long *p) {
        return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED);
    }
    static inline long ds_atomic_add(long *p, long n) {
        return __atomic_add_fetch(p, n, __ATOMIC_RELAXED);
    }
    """
    long ds_atomic_next(long *p)
    long ds_atomic_add(long *p, long n)

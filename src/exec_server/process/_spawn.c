/*
 * The fast path for starting a child: vfork + execve, with what exec-server needs between
 * them that subprocess.Popen can only do through a Python preexec_fn (which forces a full
 * fork and runs Python in the child, costing milliseconds per spawn):
 *
 *   setsid, the standard fds, the PTY as controlling terminal (TIOCSCTTY), a parent-death
 *   signal, child-subreaper status (so orphaned descendants stay in the child's tree), chdir,
 *   default signal dispositions, the open-file soft limit, and an execvp-like walk of
 *   candidate paths.
 *
 * The child shares the parent's memory until it execs (vfork), so it only makes system calls
 * and reports a failure by storing errno and the failing step in a shared variable.
 *
 * Python interface (see _spawn.pyi):
 *   spawn(candidates, argv, envp, cwd, stdin_fd, stdout_fd, stderr_fd, ctty, pdeathsig,
 *         subreaper, keep_fd=-1, cgroup_fd=-1, ignored=0, nofile=-1) -> pid
 *
 * keep_fd, when >= 3, stays open in the child under its own number (every other fd above 2
 * is closed): bubblewrap reads its seccomp program from such a descriptor. cgroup_fd, when
 * >= 0, is a cgroup.procs file the child writes "0" to (moving itself into that cgroup)
 * before it executes, so everything it starts is counted there from the first fork.
 * ignored is a mask of signals (bit N-1 for signal N) set to SIG_IGN instead of the default:
 * bubblewrap must survive the signals meant for the command it runs.
 * nofile, when >= 0, is the soft RLIMIT_NOFILE the child starts with (the hard limit is
 * kept): the server raised its own, and children get back the one it was given.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

enum step { STEP_NONE = 0, STEP_SETSID, STEP_DUP, STEP_CTTY, STEP_PDEATHSIG, STEP_CHDIR, STEP_EXEC,
            STEP_CGROUP, STEP_RLIMIT };

static const char *step_names[] = {"", "setsid", "dup2", "controlling terminal", "prctl", "chdir", "exec",
                                   "cgroup", "setrlimit"};

/* A NULL-terminated char* array into the bytes items of a sequence. The items are owned by
 * `*owner` (the sequence itself, or a list made from it), which the caller releases with
 * free_array once the child has exec'd: the pointers stay valid until then. */
static char **bytes_array(PyObject *seq, const char *what, PyObject **owner) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **array = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (array == NULL) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s must contain bytes", what);
            PyMem_Free(array); Py_DECREF(fast); return NULL;
        }
        array[i] = PyBytes_AS_STRING(item);
        if (strlen(array[i]) != (size_t)PyBytes_GET_SIZE(item)) {
            PyErr_Format(PyExc_ValueError, "embedded null byte in %s", what);
            PyMem_Free(array); Py_DECREF(fast); return NULL;
        }
    }
    *owner = fast;
    return array;
}

static void free_array(char **array, PyObject *owner) {
    PyMem_Free(array);
    Py_XDECREF(owner);
}

/* Runs in the vfork child: system calls only, no allocation, no Python. Never returns. */
static void child(char *const candidates[], char *const argv[], char *const envp[],
                  char **sh_argv, const char *cwd, int fds[3], int ctty, int pdeathsig,
                  int subreaper, int keep_fd, int cgroup_fd, unsigned long long ignored,
                  long long nofile, pid_t parent, volatile int *err, volatile int *step) {
    int i;
    if (setsid() < 0) { *step = STEP_SETSID; goto fail; }
    if (cgroup_fd >= 0 && write(cgroup_fd, "0", 1) != 1) { *step = STEP_CGROUP; goto fail; }
    /* Move sources out of 0..2 first so one dup2 cannot clobber another's source. */
    for (i = 0; i < 3; i++) {
        if (fds[i] >= 0 && fds[i] < 3 && fds[i] != i) {
            int moved = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
            if (moved < 0) { *step = STEP_DUP; goto fail; }
            fds[i] = moved;
        }
    }
    for (i = 0; i < 3; i++) {
        if (fds[i] == i) {
            int flags = fcntl(i, F_GETFD);
            if (flags >= 0) fcntl(i, F_SETFD, flags & ~FD_CLOEXEC);
        } else if (fds[i] >= 0 && dup2(fds[i], i) < 0) {
            *step = STEP_DUP; goto fail;
        }
    }
    if (ctty && ioctl(0, TIOCSCTTY, 0) < 0) { *step = STEP_CTTY; goto fail; }
    if (pdeathsig > 0) {
        if (prctl(PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0) < 0) { *step = STEP_PDEATHSIG; goto fail; }
        if (getppid() != parent) _exit(128 + pdeathsig); /* the server is already gone */
    }
    if (subreaper) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); /* best effort: kernels >= 3.4 */
    if (cwd != NULL && chdir(cwd) < 0) { *step = STEP_CHDIR; goto fail; }
    if (nofile >= 0) {
        struct rlimit limit;
        if (getrlimit(RLIMIT_NOFILE, &limit) < 0) { *step = STEP_RLIMIT; goto fail; }
        limit.rlim_cur = (rlim_t)nofile < limit.rlim_max ? (rlim_t)nofile : limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) < 0) { *step = STEP_RLIMIT; goto fail; }
    }
    if (keep_fd >= 3) {
        int flags = fcntl(keep_fd, F_GETFD);
        if (flags < 0 || fcntl(keep_fd, F_SETFD, flags & ~FD_CLOEXEC) < 0) {
            *step = STEP_DUP; goto fail;
        }
    }
#ifdef SYS_close_range
    /* best effort: Python's own fds are CLOEXEC anyway */
    if (keep_fd >= 3) {
        if (keep_fd > 3) syscall(SYS_close_range, 3, (unsigned)keep_fd - 1, 0);
        syscall(SYS_close_range, (unsigned)keep_fd + 1, ~0U, 0);
    } else {
        syscall(SYS_close_range, 3, ~0U, 0);
    }
#endif
    /* Default dispositions (Python ignores SIGPIPE and SIGXFSZ), then unblock everything. */
    for (i = 1; i < NSIG; i++) {
        if (i != SIGKILL && i != SIGSTOP)
            signal(i, (i <= 64 && (ignored >> (i - 1)) & 1ULL) ? SIG_IGN : SIG_DFL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int saved = ENOENT;
    for (i = 0; candidates[i] != NULL; i++) {
        execve(candidates[i], argv, envp);
        if (errno == ENOEXEC) {
            /* Like execvp: a file with no #! line is a shell script. */
            sh_argv[1] = candidates[i];
            execve(sh_argv[0], sh_argv, envp);
            saved = errno;
            break;
        }
        /* Like execvp: remember a permission problem, keep looking past a missing entry. */
        if (errno == EACCES) saved = EACCES;
        else if (errno != ENOENT && errno != ENOTDIR) { saved = errno; break; }
    }
    errno = saved;
    *step = STEP_EXEC;
fail:
    *err = errno;
    _exit(127);
}

static PyObject *spawn(PyObject *self, PyObject *args) {
    PyObject *candidates_obj, *argv_obj, *envp_obj, *cwd_obj;
    int fds[3], ctty, pdeathsig, subreaper, keep_fd = -1, cgroup_fd = -1;
    unsigned long long ignored = 0;
    long long nofile = -1;
    if (!PyArg_ParseTuple(args, "OOOOiiipip|iiKL", &candidates_obj, &argv_obj, &envp_obj,
                          &cwd_obj, &fds[0], &fds[1], &fds[2], &ctty, &pdeathsig, &subreaper,
                          &keep_fd, &cgroup_fd, &ignored, &nofile))
        return NULL;
    if (cwd_obj != Py_None && !PyBytes_Check(cwd_obj)) {
        PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
        return NULL;
    }
    const char *cwd = NULL;
    if (cwd_obj != Py_None) {
        cwd = PyBytes_AS_STRING(cwd_obj);
        if (strlen(cwd) != (size_t)PyBytes_GET_SIZE(cwd_obj)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte in cwd");
            return NULL;
        }
    }
    char **candidates = NULL, **argv = NULL, **envp = NULL, **sh_argv = NULL;
    PyObject *candidates_owner = NULL, *argv_owner = NULL, *envp_owner = NULL;
    PyObject *result = NULL;
    if ((candidates = bytes_array(candidates_obj, "candidates", &candidates_owner)) == NULL)
        goto done;
    if ((argv = bytes_array(argv_obj, "argv", &argv_owner)) == NULL) goto done;
    if ((envp = bytes_array(envp_obj, "envp", &envp_owner)) == NULL) goto done;
    /* /bin/sh <script> <args...>, built here because the child must not allocate. */
    Py_ssize_t argc = 0;
    while (argv[argc] != NULL) argc++;
    sh_argv = PyMem_Calloc((size_t)argc + 2, sizeof(char *));
    if (sh_argv == NULL) { PyErr_NoMemory(); goto done; }
    sh_argv[0] = "/bin/sh";
    for (Py_ssize_t k = 1; k < argc; k++) sh_argv[k + 1] = argv[k];
    if (candidates[0] == NULL) {
        errno = ENOENT;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }

    volatile int err = 0, step = STEP_NONE;
    pid_t parent = getpid();
    sigset_t all, old;
    sigfillset(&all);
    pid_t pid;
    int fork_errno;
    /* Other threads may run Python while this one waits for the child to exec (joining a
     * cgroup can take a kernel grace period): the child touches only the arrays built
     * above, which stay alive until this call returns. */
    Py_BEGIN_ALLOW_THREADS
    /* No signal handler may run in the child while it shares our memory. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = vfork();
    if (pid == 0) {
        child(candidates, argv, envp, sh_argv, cwd, fds, ctty, pdeathsig, subreaper, keep_fd,
              cgroup_fd, ignored, nofile, parent, &err, &step);
    }
    fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    Py_END_ALLOW_THREADS
    if (pid < 0) {
        errno = fork_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (err != 0) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        /* OSError(errno, strerror, step): the Python side names the path the step used. */
        PyObject *exc_args = Py_BuildValue("(iss)", err, strerror(err), step_names[step]);
        if (exc_args != NULL) {
            PyErr_SetObject(PyExc_OSError, exc_args);
            Py_DECREF(exc_args);
        }
        goto done;
    }
    result = PyLong_FromLong((long)pid);
done:
    if (candidates) free_array(candidates, candidates_owner);
    if (argv) free_array(argv, argv_owner);
    if (envp) free_array(envp, envp_owner);
    if (sh_argv) PyMem_Free(sh_argv);
    return result;
}

/* The server itself becomes a child subreaper (without loading ctypes at start-up). */
static PyObject *become_subreaper(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS,
     "spawn(candidates, argv, envp, cwd, stdin_fd, stdout_fd, stderr_fd, ctty, pdeathsig,\n"
     "      subreaper, keep_fd=-1, cgroup_fd=-1, ignored=0, nofile=-1) -> pid\n"
     "Start a child with vfork+execve; raises OSError naming the failing step."},
    {"become_subreaper", become_subreaper, METH_NOARGS,
     "become_subreaper() -> bool\nMake this process a child subreaper (PR_SET_CHILD_SUBREAPER)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spawn",
                                    "vfork-based child start for exec-server.", -1, methods};

PyMODINIT_FUNC PyInit__spawn(void) { return PyModule_Create(&module); }

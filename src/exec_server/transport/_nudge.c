/*
 * A thread that is woken as a reply goes out, so that the kernel keeps the client on our CPU.
 *
 * Why: a client that sends a request and waits for the reply (polling process/read, say) is
 * asleep when the reply is written. The write wakes it, and the scheduler puts it on an idle
 * CPU if there is one rather than on ours, which is about to go idle anyway. Waking a task on
 * an idle CPU costs an inter-processor interrupt and, in a VM, the wait for the host to run
 * that vCPU again; a wake-up on our own CPU costs neither. When the other CPU is busy at the
 * moment of the write, the client is woken here. This thread makes it busy: the server wakes
 * it just before writing a reply, it runs on another CPU for a moment, and goes back to
 * sleep. On the 2-vCPU bench VM sequential process/read calls went 1.3-2x as fast, over
 * WebSocket and over stdio (bench/README.md has the runs).
 * The reference's runtime gets the same effect by handing its socket to a second worker
 * thread on every request.
 *
 * The thread holds no GIL and touches no Python object; it blocks every signal. There is one
 * per process, started by the first start() (transport/flow.py calls it on import) and never
 * stopped; it owns one eventfd. A nudge while the thread is already awake is skipped, so a
 * busy server pays at most one wake-up per time the thread falls asleep.
 *
 * Python interface (see _nudge.pyi):
 *   start()  start the thread if it is not running (OSError if it cannot)
 *   nudge()  wake it, if it was started and is asleep
 */
#define _GNU_SOURCE /* pthread_setname_np */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define THREAD_STACK_BYTES (64 * 1024)

static int wake_fd = -1;      /* set once the thread runs; only start() writes it, under the GIL */
static atomic_int asleep = 0; /* the thread is (about to be) blocked reading wake_fd */

static void *run(void *unused) {
    (void)unused;
    uint64_t value;
    for (;;) {
        atomic_store(&asleep, 1);
        /* A nudge between the store and the read makes the read return at once: no loss. */
        if (read(wake_fd, &value, sizeof value) < 0 && errno != EINTR && errno != EAGAIN) {
            atomic_store(&asleep, 0); /* cannot happen with a valid eventfd; stop nudging */
            return NULL;
        }
    }
}

static PyObject *start(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    if (wake_fd >= 0) Py_RETURN_NONE;
    int fd = eventfd(0, EFD_CLOEXEC);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    wake_fd = fd;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread inherits: no signal lands on it */
    pthread_t thread;
    int err = pthread_create(&thread, &attr, run, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        close(fd);
        wake_fd = -1;
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_setname_np(thread, "cpu-nudge");
    Py_RETURN_NONE;
}

static PyObject *nudge(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    if (wake_fd >= 0 && atomic_exchange(&asleep, 0)) {
        uint64_t one = 1;
        ssize_t written = write(wake_fd, &one, sizeof one);
        (void)written; /* a full counter (2^64 - 2 nudges unread) only means it is awake */
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"start", start, METH_NOARGS, "Start the nudge thread if it is not running."},
    {"nudge", nudge, METH_NOARGS, "Wake the nudge thread if it is asleep."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_nudge",
    "A thread woken as a reply goes out, so the client is woken on our CPU.", -1, methods,
};

PyMODINIT_FUNC PyInit__nudge(void) { return PyModule_Create(&module_def); }

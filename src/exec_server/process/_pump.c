/*
 * A reader thread for one streaming PTY master, holding no GIL.
 *
 * Why: every ~4 KiB a PTY master hands out needs a round trip with the kernel worker that
 * refills its line discipline (flush_to_ldisc). On the event loop those waits and the sending
 * of each chunk take turns; on a thread of its own the waits overlap the sending. A Python
 * thread could not do this (each read needs the GIL back), so the thread is C and never
 * touches a Python object.
 *
 * Shape: the thread reads the (non-blocking) master into a private scratch buffer, polls
 * when it is empty, and appends what it read to a bounded shared buffer under a mutex. When
 * the buffer goes from "nothing to say" to "something to say" (data, end of file or an
 * error) it writes an eventfd, once until the next take(); the loop watches that eventfd and
 * calls take(), which hands over everything read since (up to a limit). So the loop is woken
 * once per chunk it sends, not once per read, and an interactive echo goes out at once.
 * (Waking only at half a buffer or at EAGAIN was measured too: no faster, and it delays.)
 * A full buffer stops the thread until take() makes room, so backpressure reaches the child.
 *
 * The master fd is not owned: the caller must stop() the pump before closing it. stop()
 * wakes the thread (a second eventfd), joins it with the GIL released, and leaves whatever
 * was read for take(), so no byte is lost when the loop takes the fd back.
 *
 * Python interface (see _pump.pyi):
 *   Pump(fd, capacity)  start the thread (OSError if it cannot; ValueError if fd is blocking)
 *   .fileno()           the eventfd to watch for readability
 *   .take(limit)        bytes: up to limit bytes read so far;
 *                       b"": end of file (EOF, or EIO: the last slave closed) once all is taken;
 *                       None: nothing yet (a spurious wake-up, or stopped with nothing left);
 *                       OSError: the read failed, once all is taken.
 *   .stop()             stop and join the thread (idempotent); take() still works after it
 *   .ended              True once the thread saw end of file or an error
 *   .close()            stop(), then close the eventfds
 */
#define _GNU_SOURCE /* pthread_setname_np */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SCRATCH_BYTES (64 * 1024)
#define THREAD_STACK_BYTES (128 * 1024)

typedef struct {
    PyObject_HEAD
    int fd;        /* the PTY master: read by the thread, owned by the caller */
    int notify_fd; /* eventfd the loop watches */
    int stop_fd;   /* eventfd that wakes the thread to stop */
    int running;   /* the thread was started and not yet joined */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t room;
    /* Guarded by lock: */
    char *buffer;
    size_t capacity;
    size_t length;
    int notified; /* notify_fd was written since the last take() */
    int stopping;
    int ended; /* the thread saw end of file (error == 0) or an error */
    int error;
    /* The thread's own: */
    char *scratch;
} Pump;

static void signal_eventfd(int fd) {
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(fd, &one, sizeof one);
    } while (n < 0 && errno == EINTR);
    /* EAGAIN would mean the counter is at its maximum: the fd is readable anyway. */
}

/* With lock held: mark that there is something to say; returns whether to signal. */
static int mark_news(Pump *p) {
    if (p->notified) return 0;
    p->notified = 1;
    return 1;
}

static void end(Pump *p, int error) {
    pthread_mutex_lock(&p->lock);
    p->ended = 1;
    p->error = error;
    int wake = mark_news(p);
    pthread_mutex_unlock(&p->lock);
    if (wake) signal_eventfd(p->notify_fd);
}

static void *run(void *arg) {
    Pump *p = (Pump *)arg;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (!p->stopping && p->length >= p->capacity) pthread_cond_wait(&p->room, &p->lock);
        size_t room = p->capacity - p->length;
        int stopping = p->stopping;
        pthread_mutex_unlock(&p->lock);
        if (stopping) return NULL;
        if (room > SCRATCH_BYTES) room = SCRATCH_BYTES;

        ssize_t n = read(p->fd, p->scratch, room);
        if (n > 0) {
            pthread_mutex_lock(&p->lock);
            /* take() only ever shortens the buffer, so the room measured above is still there. */
            memcpy(p->buffer + p->length, p->scratch, (size_t)n);
            p->length += (size_t)n;
            int wake = mark_news(p);
            pthread_mutex_unlock(&p->lock);
            if (wake) signal_eventfd(p->notify_fd);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd fds[2] = {{p->fd, POLLIN, 0}, {p->stop_fd, POLLIN, 0}};
            if (poll(fds, 2, -1) < 0 && errno != EINTR) {
                end(p, errno);
                return NULL;
            }
            if (fds[1].revents) return NULL; /* stop(): the flag is seen at the top */
            continue; /* readable, hung up or in error: the read says which */
        }
        end(p, (n == 0 || errno == EIO) ? 0 : errno);
        return NULL;
    }
}

static void stop_thread(Pump *p) {
    if (!p->running) return;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    pthread_cond_signal(&p->room);
    pthread_mutex_unlock(&p->lock);
    signal_eventfd(p->stop_fd);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(p->thread, NULL);
    Py_END_ALLOW_THREADS
    p->running = 0;
}

static void close_fds(Pump *p) {
    if (p->notify_fd >= 0) close(p->notify_fd);
    if (p->stop_fd >= 0) close(p->stop_fd);
    p->notify_fd = p->stop_fd = -1;
}

static int Pump_init(Pump *p, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"fd", "capacity", NULL};
    int fd;
    Py_ssize_t capacity;
    if (p->buffer != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Pump is already initialized");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "in:Pump", keywords, &fd, &capacity)) return -1;
    if (fd < 0 || capacity <= 0) {
        PyErr_SetString(PyExc_ValueError, "fd must be open and capacity positive");
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (!(flags & O_NONBLOCK)) { /* a blocking read could keep stop() waiting forever */
        PyErr_SetString(PyExc_ValueError, "the fd must be non-blocking");
        return -1;
    }
    p->fd = fd;
    p->capacity = (size_t)capacity;
    p->buffer = PyMem_RawMalloc(p->capacity);
    p->scratch = PyMem_RawMalloc(SCRATCH_BYTES);
    if (p->buffer == NULL || p->scratch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    p->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    p->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->notify_fd < 0 || p->stop_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close_fds(p);
        return -1;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
    /* Signals are the main thread's business: the new thread starts with all of them blocked. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    int rc = pthread_create(&p->thread, &attr, run, p);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        close_fds(p);
        return -1;
    }
    pthread_setname_np(p->thread, "pty-reader"); /* so top -H and /proc tell it apart */
    p->running = 1;
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Pump *p = (Pump *)type->tp_alloc(type, 0);
    if (p == NULL) return NULL;
    p->fd = p->notify_fd = p->stop_fd = -1;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->room, NULL);
    return (PyObject *)p;
}

static void Pump_dealloc(Pump *p) {
    stop_thread(p);
    close_fds(p);
    PyMem_RawFree(p->buffer);
    PyMem_RawFree(p->scratch);
    pthread_cond_destroy(&p->room);
    pthread_mutex_destroy(&p->lock);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *Pump_fileno(Pump *p, PyObject *unused) {
    if (p->notify_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "Pump is closed");
        return NULL;
    }
    return PyLong_FromLong(p->notify_fd);
}

static PyObject *Pump_take(Pump *p, PyObject *arg) {
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (limit <= 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be positive");
        return NULL;
    }
    if (p->buffer == NULL) {
        PyErr_SetString(PyExc_ValueError, "Pump is not initialized");
        return NULL;
    }
    if (p->notify_fd >= 0) {
        uint64_t count;
        ssize_t ignored = read(p->notify_fd, &count, sizeof count); /* EAGAIN is fine */
        (void)ignored;
    }
    PyObject *result = NULL;
    int again = 0;
    pthread_mutex_lock(&p->lock);
    size_t n = p->length < (size_t)limit ? p->length : (size_t)limit;
    if (n > 0) {
        result = PyBytes_FromStringAndSize(p->buffer, (Py_ssize_t)n);
        if (result != NULL) {
            memmove(p->buffer, p->buffer + n, p->length - n);
            p->length -= n;
            pthread_cond_signal(&p->room);
            again = p->length > 0 || p->ended; /* more to say: wake the loop once more */
        }
    } else if (p->ended && p->error != 0) {
        errno = p->error;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (p->ended) {
        result = PyBytes_FromStringAndSize(NULL, 0);
    } else {
        result = Py_NewRef(Py_None);
    }
    p->notified = again;
    pthread_mutex_unlock(&p->lock);
    if (again && p->notify_fd >= 0) signal_eventfd(p->notify_fd);
    return result;
}

static PyObject *Pump_stop(Pump *p, PyObject *unused) {
    stop_thread(p);
    Py_RETURN_NONE;
}

static PyObject *Pump_close(Pump *p, PyObject *unused) {
    stop_thread(p);
    close_fds(p);
    Py_RETURN_NONE;
}

static PyObject *Pump_get_ended(Pump *p, void *closure) {
    pthread_mutex_lock(&p->lock);
    int ended = p->ended;
    pthread_mutex_unlock(&p->lock);
    return PyBool_FromLong(ended);
}

static PyMethodDef Pump_methods[] = {
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS, "The eventfd that is readable when take() has news."},
    {"take", (PyCFunction)Pump_take, METH_O, "take(limit) -> bytes | None: what the thread read so far."},
    {"stop", (PyCFunction)Pump_stop, METH_NOARGS, "Stop and join the thread; what it read stays for take()."},
    {"close", (PyCFunction)Pump_close, METH_NOARGS, "stop(), then close the eventfds."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Pump_getset[] = {
    {"ended", (getter)Pump_get_ended, NULL, "Whether the thread saw end of file or an error.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "exec_server.process._pump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pump(fd, capacity): a GIL-free thread reading a PTY master into a bounded buffer.",
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
    .tp_getset = Pump_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pump",
                                    "A GIL-free reader thread for a streaming PTY.", -1, NULL};

PyMODINIT_FUNC PyInit__pump(void) {
    if (PyType_Ready(&PumpType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

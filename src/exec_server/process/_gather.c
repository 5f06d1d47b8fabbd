/*
 * Gathering reads of a child's output fd: read(2), then read on while more is already there.
 *
 * A PTY master hands out at most about 4 KiB per read (its line discipline's buffer). A read
 * that finds that buffer empty does not return EAGAIN at once: Linux's n_tty_read first waits
 * for the kernel worker that refills it (tty_buffer_flush_work). Reading on until EAGAIN thus
 * made every 4 KiB of a streaming PTY a synchronous round trip with that worker, with the
 * event loop blocked. So after the first read this asks FIONREAD (TIOCINQ), which tells what
 * is buffered without waiting, and stops when nothing is: the worker refills while the chunk
 * is sent. On a pipe it costs what the EAGAIN read cost.
 *
 * Python interface (see _gather.pyi):
 *   gather(fd, limit) -> bytes | None
 *     bytes: what was there, up to limit (b"" is end of file: EOF or EIO at the first read);
 *     None:  nothing there yet (EAGAIN at the first read);
 *     OSError for any other error at the first read. An error or EOF after some data ends
 *     the gather early; the next call sees it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/ioctl.h>
#include <unistd.h>

static PyObject *gather(PyObject *self, PyObject *args) {
    int fd;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "in:gather", &fd, &limit)) return NULL;
    if (limit <= 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be positive");
        return NULL;
    }
    PyObject *buffer = PyBytes_FromStringAndSize(NULL, limit);
    if (buffer == NULL) return NULL;
    char *data = PyBytes_AS_STRING(buffer);
    Py_ssize_t size = 0;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    while (size < limit) {
        int buffered = 0;
        if (size > 0 && (ioctl(fd, FIONREAD, &buffered) < 0 || buffered <= 0)) break;
        ssize_t n = read(fd, data + size, (size_t)(limit - size));
        if (n > 0) {
            size += n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && size == 0) error = errno;
        break; /* EOF, EAGAIN or an error: what was gathered goes back now */
    }
    Py_END_ALLOW_THREADS
    if (error == EAGAIN || error == EWOULDBLOCK) {
        Py_DECREF(buffer);
        Py_RETURN_NONE;
    }
    if (error == EIO) error = 0; /* a PTY whose last slave closed: end of file */
    if (error != 0) {
        Py_DECREF(buffer);
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (size < limit && _PyBytes_Resize(&buffer, size) < 0) return NULL;
    return buffer;
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS,
     "gather(fd, limit) -> bytes | None\n"
     "Read up to limit bytes from a non-blocking fd, without the GIL; None if nothing is there."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gather",
                                    "GIL-free gathering reads for exec-server.", -1, methods};

PyMODINIT_FUNC PyInit__gather(void) { return PyModule_Create(&module); }

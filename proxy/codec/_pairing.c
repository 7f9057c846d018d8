/* PairingCore: the compiled twin of proxy/codec/pairing.py's PairingCorePython.
 *
 * Splits both directions of one connection into frames, remembers each request until its
 * response, counts requests, bytes and latency per API, reads the acks of Produce requests the
 * owner does not take, and hands the owner only the frames its policy names. Pieces, errors and
 * messages are the Python twin's (which composes two framing.FrameScanner); the twin documents
 * the logic, this file only makes it cheap: one call per read instead of a few dozen.
 *
 * Forwarded pieces are the object fed in (where a piece covers the whole read; the Python twin
 * gives a memoryview of it there, except for a read that is exactly one frame) or memoryview
 * slices of it; a held frame split over reads is joined into bytes once whole, as the Python
 * scanner does, unless the owner reads the rest of it in place (request_buffer,
 * response_buffer): it then comes out as the bytearray it was read into. A Produce request held
 * for its acks is read as soon as it is whole, where the Python twin reads it after the whole
 * read was split: after an error in the same read (the connection then closes) `in_flight` may
 * differ. The ring of pending requests grows as needed (the relay stops reading a client that
 * has too many requests outstanding, so it stays small).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_pairing.h"
#include "_request_roots.h"
#include "_schema_walk.h"

#define SIZE_PREFIX 4
#define REQUEST_PEEK 8
#define RESPONSE_PEEK 4
#define API_SLOTS 256            /* API keys 0..255 have their own counts and policy */
#define OTHER_SLOT API_SLOTS     /* keys Kafka does not define */
#define MAX_BUCKETS 32
#define PRODUCE_KEY 0
#define FETCH_KEY 1
#define PRODUCE_FLEXIBLE_FROM 9
#define PRODUCE_TRANSACTIONAL_ID_FROM 3

typedef struct {
    int32_t correlation_id;
    int16_t api_key;
    int16_t api_version;
    char expects;
    double received_at;
    PyObject *state; /* owned, or NULL */
} Pending;

typedef struct {
    uint64_t requests, request_bytes, response_bytes;
    uint64_t latency[MAX_BUCKETS + 1];
    double latency_sum;
    int used;
    int order; /* first-use order, as the Python twin's dict keeps it */
} Counts;

typedef struct {
    Py_ssize_t peek_size;
    Py_ssize_t forward_remaining;
    unsigned char head[SIZE_PREFIX + REQUEST_PEEK];
    Py_ssize_t head_len;
    PyObject *held;          /* list of kept pieces of a frame being held, or NULL */
    PyObject *assembly;      /* or the bytearray it is read into in place (reserve), or NULL */
    Py_ssize_t held_size, held_remaining;
    PyObject *held_token;    /* owned */
} Scanner;

typedef struct {
    PyObject_HEAD
    Scanner requests, responses;
    Pending *ring;
    Py_ssize_t ring_cap, ring_head, ring_len, expecting;
    long long first_seq;
    int hold_request_low[API_SLOTS], hold_request_high[API_SLOTS];
    int hold_response_low[API_SLOTS], hold_response_high[API_SLOTS];
    int acks_low, acks_high;
    unsigned char known[API_SLOTS];
    double buckets[MAX_BUCKETS];
    int bucket_count;
    Counts *counts[API_SLOTS + 1];
    int next_order;
    Py_ssize_t max_frame_size;
    PyObject *protocol_error, *too_large;
    PyObject *walks; /* dict: (api key << 16 | version) -> (program, forward when clean) */
    unsigned char walked_api[API_SLOTS]; /* API keys with any entry in walks */
    PyObject *lane;          /* the Produce request lane, or NULL */
    int lane_low, lane_high; /* the Produce versions it takes */
    unsigned long long lane_rewritten, lane_records; /* since the last take_lane_counts */
    PyObject *fetch_lane;    /* the Fetch response lane, or NULL */
    int fetch_lane_low, fetch_lane_high; /* the Fetch versions it takes */
    Py_ssize_t fetch_lane_max_size; /* and the largest of them, less the size prefix */
    PyObject *fetch_skims;   /* list: what the fetch lane made of the responses it forwarded */
} PairingCore;

/* How a request frame is taken once whole (the second item of its token). */
enum { TAKE_HOLD, TAKE_ACKS, TAKE_LANE };

/* -- helpers ------------------------------------------------------------------------------ */

static inline int32_t
be32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

static inline int16_t
be16(const unsigned char *p)
{
    return (int16_t)(((uint16_t)p[0] << 8) | (uint16_t)p[1]);
}

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static Counts *
counts_for(PairingCore *self, int api_key)
{
    int slot = (api_key >= 0 && api_key < API_SLOTS && self->known[api_key]) ? api_key : OTHER_SLOT;
    Counts *c = self->counts[slot];
    if (c == NULL) {
        c = PyMem_Calloc(1, sizeof(Counts));
        if (c == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        self->counts[slot] = c;
    }
    if (!c->used) {
        c->used = 1;
        c->order = self->next_order++;
    }
    return c;
}

static Pending *
pending_at(PairingCore *self, Py_ssize_t index)
{
    return &self->ring[(self->ring_head + index) % self->ring_cap];
}

static int
ring_push(PairingCore *self, int32_t correlation_id, int16_t api_key, int16_t api_version)
{
    if (self->ring_len == self->ring_cap) {
        Py_ssize_t cap = self->ring_cap ? self->ring_cap * 2 : 16;
        Pending *ring = PyMem_Malloc(sizeof(Pending) * (size_t)cap);
        if (ring == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < self->ring_len; i++) {
            ring[i] = *pending_at(self, i);
        }
        PyMem_Free(self->ring);
        self->ring = ring;
        self->ring_cap = cap;
        self->ring_head = 0;
    }
    Pending *p = pending_at(self, self->ring_len);
    p->correlation_id = correlation_id;
    p->api_key = api_key;
    p->api_version = api_version;
    p->expects = 1;
    p->received_at = monotonic_now();
    p->state = NULL;
    self->ring_len++;
    self->expecting++;
    return 0;
}

static void
ring_pop(PairingCore *self)
{
    Pending *p = pending_at(self, 0);
    Py_CLEAR(p->state);
    self->ring_head = (self->ring_head + 1) % self->ring_cap;
    self->ring_len--;
    self->first_seq++;
}

static Pending *
pending_by_seq(PairingCore *self, long long seq)
{
    long long index = seq - self->first_seq;
    if (index < 0 || index >= self->ring_len) {
        PyErr_SetString(PyExc_IndexError, "no pending request has that seq");
        return NULL;
    }
    return pending_at(self, (Py_ssize_t)index);
}

/* The pending entry of a request the scanner has just finished holding. */
static Pending *
held_request(PairingCore *self, long long seq)
{
    if (seq < self->first_seq) {
        PyErr_SetString(self->protocol_error,
                        "a response arrived before its request was sent whole");
        return NULL;
    }
    return pending_by_seq(self, seq);
}

/* The acks of a Produce request body (header included), or ACKS_UNREAD when anything about
 * it is unusual; read_produce_acks in pairing.py is the twin. */
#define ACKS_UNREAD INT_MIN

static int
read_produce_acks(const unsigned char *body, Py_ssize_t size, int api_version)
{
    Py_ssize_t offset = produce_plain_header_size(body, size, api_version);
    if (offset < 0) {
        return ACKS_UNREAD; /* a client id that is not plain ASCII, or tagged header fields */
    }
    if (api_version >= PRODUCE_TRANSACTIONAL_ID_FROM) {
        if (api_version >= PRODUCE_FLEXIBLE_FROM) {
            if (offset >= size || (body[offset] & 0x80)) {
                return ACKS_UNREAD;
            }
            int compact = body[offset];
            offset += 1 + (compact > 1 ? compact - 1 : 0);
        }
        else {
            if (offset + 2 > size) {
                return ACKS_UNREAD;
            }
            int id_length = be16(body + offset);
            offset += 2 + (id_length > 0 ? id_length : 0);
        }
    }
    if (offset + 2 > size) {
        return ACKS_UNREAD;
    }
    return be16(body + offset);
}

/* -- classification (the Python twin's _request and _response) ------------------------------ */

/* Returns a new reference: Py_None to forward, else the token of a held frame; NULL on error. */
static PyObject *
classify_request(PairingCore *self, const unsigned char *peek, Py_ssize_t size)
{
    int16_t api_key = be16(peek);
    int16_t api_version = be16(peek + 2);
    int32_t correlation_id = be32(peek + 4);
    long long seq = self->first_seq + self->ring_len;
    if (ring_push(self, correlation_id, api_key, api_version) < 0) {
        return NULL;
    }
    Counts *c = counts_for(self, api_key);
    if (c == NULL) {
        return NULL;
    }
    c->requests += 1;
    c->request_bytes += (uint64_t)size + SIZE_PREFIX;
    int take;
    if (api_key == PRODUCE_KEY && self->lane != NULL && self->lane_low <= api_version &&
        api_version <= self->lane_high) {
        take = TAKE_LANE;
    }
    else if (api_key >= 0 && api_key < API_SLOTS && self->hold_request_low[api_key] <= api_version &&
             api_version <= self->hold_request_high[api_key]) {
        take = TAKE_HOLD;
    }
    else if (api_key == PRODUCE_KEY && self->acks_low <= api_version &&
             api_version <= self->acks_high) {
        take = TAKE_ACKS;
    }
    else if (api_key == PRODUCE_KEY) {
        take = TAKE_HOLD; /* a version this module cannot read for sure */
    }
    else {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(Li)", seq, take);
}

static PyObject *
classify_response(PairingCore *self, const unsigned char *peek, Py_ssize_t size)
{
    int32_t correlation_id = be32(peek);
    while (self->ring_len && !pending_at(self, 0)->expects) {
        ring_pop(self);
    }
    if (!self->ring_len) {
        PyErr_Format(self->protocol_error, "response %d arrived with no request outstanding",
                     (int)correlation_id);
        return NULL;
    }
    Pending entry = *pending_at(self, 0);
    pending_at(self, 0)->state = NULL; /* the reference moves to `entry` */
    ring_pop(self);
    self->expecting--;
    if (entry.correlation_id != correlation_id) {
        Py_XDECREF(entry.state);
        PyErr_Format(self->protocol_error,
                     "response %d does not answer the oldest request %d (api key %d)",
                     (int)correlation_id, (int)entry.correlation_id, (int)entry.api_key);
        return NULL;
    }
    double latency = monotonic_now() - entry.received_at;
    Counts *c = counts_for(self, entry.api_key);
    if (c == NULL) {
        Py_XDECREF(entry.state);
        return NULL;
    }
    int bucket = 0; /* bisect_left */
    while (bucket < self->bucket_count && self->buckets[bucket] < latency) {
        bucket++;
    }
    c->latency[bucket] += 1;
    c->latency_sum += latency;
    c->response_bytes += (uint64_t)size + SIZE_PREFIX;
    int key = entry.api_key;
    int in_api = key >= 0 && key < API_SLOTS;
    int handed_over = entry.state != NULL ||
        (in_api && self->hold_response_low[key] <= entry.api_version &&
         entry.api_version <= self->hold_response_high[key]);
    PyObject *program = Py_None;
    int forwarding = 0;
    if (in_api && self->walked_api[key]) {
        PyObject *walk_key = PyLong_FromLong(((long)key << 16) | (entry.api_version & 0xFFFF));
        if (walk_key == NULL) {
            Py_XDECREF(entry.state);
            return NULL;
        }
        PyObject *walk = PyDict_GetItemWithError(self->walks, walk_key); /* borrowed */
        Py_DECREF(walk_key);
        if (walk != NULL) {
            program = PyTuple_GET_ITEM(walk, 0);
            forwarding = PyObject_IsTrue(PyTuple_GET_ITEM(walk, 1));
            if (forwarding < 0) {
                Py_XDECREF(entry.state);
                return NULL;
            }
        }
        else if (PyErr_Occurred()) {
            Py_XDECREF(entry.state);
            return NULL;
        }
    }
    if (handed_over || (program != Py_None && forwarding)) {
        PyObject *token = Py_BuildValue("(iiiOOO)", key, (int)entry.api_version,
                                        (int)entry.correlation_id,
                                        entry.state != NULL ? entry.state : Py_None, program,
                                        handed_over ? Py_True : Py_False);
        Py_XDECREF(entry.state);
        return token;
    }
    Py_RETURN_NONE;
}

static PyObject *
classify(PairingCore *self, Scanner *scanner, const unsigned char *peek, Py_ssize_t size)
{
    return scanner == &self->requests ? classify_request(self, peek, size)
                                      : classify_response(self, peek, size);
}

/* -- emitting pieces ------------------------------------------------------------------------ */

typedef struct {
    PyObject *data;       /* the object fed in (borrowed) */
    Py_buffer buffer;
    PyObject *view;       /* memoryview of data, made on first need (owned) */
    PyObject *out;        /* the result list (owned) */
    Py_ssize_t held;      /* held items in out */
} Feed;

static PyObject *
feed_slice(Feed *feed, Py_ssize_t start, Py_ssize_t end)
{
    if (start == 0 && end == feed->buffer.len) {
        Py_INCREF(feed->data);
        return feed->data;
    }
    if (feed->view == NULL) {
        feed->view = PyMemoryView_FromObject(feed->data);
        if (feed->view == NULL) {
            return NULL;
        }
    }
    return PySequence_GetSlice(feed->view, start, end);
}

/* A piece to keep past this call: a slice of an immutable buffer, a copy of a mutable one. */
static PyObject *
feed_kept(Feed *feed, Py_ssize_t start, Py_ssize_t end)
{
    if (feed->buffer.readonly) {
        if (feed->view == NULL) {
            feed->view = PyMemoryView_FromObject(feed->data);
            if (feed->view == NULL) {
                return NULL;
            }
        }
        return PySequence_GetSlice(feed->view, start, end);
    }
    return PyBytes_FromStringAndSize((const char *)feed->buffer.buf + start, end - start);
}

/* One copy of a held frame's pieces, made once it is whole (b"".join). */
static PyObject *
join_pieces(PyObject *pieces)
{
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL) {
        return NULL;
    }
    PyObject *joined = PyObject_CallMethod(empty, "join", "O", pieces);
    Py_DECREF(empty);
    return joined;
}

static int
append_new(PyObject *list, PyObject *item)
{
    if (item == NULL) {
        return -1;
    }
    int result = PyList_Append(list, item);
    Py_DECREF(item);
    return result;
}

/* Whether a response frame walks to its end without tagged fields of its own; the Python
 * twin's _untagged. A flexible response (its program's first item) has a header of v1. */
static int
response_untagged(PyObject *program, const unsigned char *frame, Py_ssize_t size)
{
    const unsigned char *body = frame + SIZE_PREFIX;
    Py_ssize_t length = size - SIZE_PREFIX;
    Py_ssize_t offset = 4;
    int flexible = PyObject_IsTrue(PyTuple_GET_ITEM(program, 0));
    if (flexible < 0) {
        PyErr_Clear();
        return 0;
    }
    if (flexible) {
        if (length < 5 || body[4] != 0) {
            return 0;
        }
        offset = 5;
    }
    return schema_walk_untagged(program, body, length, offset);
}

/* A Produce request through the lane (its acks read): 1 when it goes out as the lane rebuilt it,
 * with *sent the frame to send; 0 when it is handed to the owner, with *sent the lane's result
 * (a new reference) or None; -1 on an error. The lane is the owner's code: it may call back
 * into the core, so nothing is kept across the call but the request's seq. */
static int
take_by_lane(PairingCore *self, long long seq, int api_version, int acks, PyObject *frame,
             PyObject **sent)
{
    if (self->lane == NULL) { /* removed while the frame came in: the owner judges it */
        *sent = Py_NewRef(Py_None);
        return 0;
    }
    PyObject *lane = Py_NewRef(self->lane);
    PyObject *result = PyObject_CallFunction(lane, "Oi", frame, api_version);
    Py_DECREF(lane);
    if (result == NULL) {
        return -1;
    }
    if (result == Py_None) {
        *sent = result; /* declined: handed over with None */
        return 0;
    }
    long long records = -1;
    if (PyTuple_CheckExact(result) && PyTuple_GET_SIZE(result) == 4 &&
        (PyBytes_CheckExact(PyTuple_GET_ITEM(result, 0)) ||
         PyByteArray_CheckExact(PyTuple_GET_ITEM(result, 0)) ||
         PyMemoryView_Check(PyTuple_GET_ITEM(result, 0))) &&
        PyList_CheckExact(PyTuple_GET_ITEM(result, 3)) &&
        PyLong_CheckExact(PyTuple_GET_ITEM(result, 1))) {
        records = PyLong_AsLongLong(PyTuple_GET_ITEM(result, 1));
        PyErr_Clear(); /* too large for 64 bits: refused below like a negative count */
    }
    if (records < 0) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_TypeError,
                        "the produce lane must return None or (frame, records >= 0, "
                        "transactional id, list)");
        return -1;
    }
    if (PyList_GET_SIZE(PyTuple_GET_ITEM(result, 3)) > 0) {
        *sent = result; /* sampled records: the owner builds their spans */
        return 0;
    }
    Pending *p = pending_by_seq(self, seq);
    if (p == NULL) {
        Py_DECREF(result);
        return -1;
    }
    PyObject *out = PyTuple_GET_ITEM(result, 0);
    if (acks == 0 && p->expects) {
        p->expects = 0;
        self->expecting--;
    }
    self->lane_records += (unsigned long long)records;
    self->lane_rewritten += out != frame;
    *sent = Py_NewRef(out);
    Py_DECREF(result);
    return 1;
}

/* A Fetch response that walked clean, with no state attached, through the fetch lane: 1 when
 * the lane took it (forward it as it is, at `position` in what this feed gives out: its result
 * was kept in fetch_skims as (position, result)), 0 when it is handed to the owner as before
 * (another API or version, no lane, or the lane declined with None), -1 on an error. Like the
 * produce lane, the lane is the owner's code. */
static int
take_by_fetch_lane(PairingCore *self, PyObject *key, PyObject *version, PyObject *frame,
                   Py_ssize_t position)
{
    if (self->fetch_lane == NULL || PyLong_AsLong(key) != FETCH_KEY) {
        return 0;
    }
    long v = PyLong_AsLong(version);
    if (v < self->fetch_lane_low || v > self->fetch_lane_high ||
        PyObject_Size(frame) - SIZE_PREFIX > self->fetch_lane_max_size) {
        return 0;
    }
    PyObject *lane = Py_NewRef(self->fetch_lane);
    PyObject *args[2] = {frame, version};
    PyObject *result = PyObject_Vectorcall(lane, args, 2, NULL);
    Py_DECREF(lane);
    if (result == NULL) {
        return -1;
    }
    if (result == Py_None) {
        Py_DECREF(result);
        return 0;
    }
    PyObject *kept = Py_BuildValue("(nN)", position, result);
    if (kept == NULL) {
        return -1;
    }
    int failed = PyList_Append(self->fetch_skims, kept);
    Py_DECREF(kept);
    return failed < 0 ? -1 : 1;
}

/* A whole held frame goes out: forwarded after its acks were read or its walk, or handed to
 * the owner. */
static int
emit_held(PairingCore *self, Scanner *scanner, Feed *feed, PyObject *token, PyObject *frame)
{
    if (frame == NULL) {
        return -1;
    }
    PyObject *item;
    if (scanner == &self->requests) {
        long long seq = PyLong_AsLongLong(PyTuple_GET_ITEM(token, 0));
        long take = PyLong_AsLong(PyTuple_GET_ITEM(token, 1));
        Pending *p = held_request(self, seq);
        if (p == NULL) {
            Py_DECREF(frame);
            return -1;
        }
        PyObject *lane_result = NULL; /* owned once set */
        if (take != TAKE_HOLD) {
            Py_buffer b;
            if (PyObject_GetBuffer(frame, &b, PyBUF_SIMPLE) < 0) {
                Py_DECREF(frame);
                return -1;
            }
            int acks = read_produce_acks((const unsigned char *)b.buf + SIZE_PREFIX,
                                         b.len - SIZE_PREFIX, p->api_version);
            PyBuffer_Release(&b);
            if (acks != ACKS_UNREAD && take == TAKE_LANE) {
                int taken = take_by_lane(self, seq, p->api_version, acks, frame, &lane_result);
                if (taken != 0) {
                    Py_DECREF(frame);
                    return taken < 0 ? -1 : append_new(feed->out, lane_result);
                }
                p = pending_by_seq(self, seq); /* the lane may have moved the ring */
                if (p == NULL) {
                    Py_DECREF(frame);
                    Py_DECREF(lane_result);
                    return -1;
                }
            }
            else if (acks != ACKS_UNREAD) {
                if (acks == 0 && p->expects) {
                    p->expects = 0;
                    self->expecting--;
                }
                return append_new(feed->out, frame);
            }
        }
        item = Py_BuildValue("(LiiiNN)", seq, (int)p->api_key, (int)p->api_version,
                             (int)p->correlation_id, frame,
                             lane_result != NULL ? lane_result : Py_NewRef(Py_None));
    }
    else {
        PyObject *program = PyTuple_GET_ITEM(token, 4);
        PyObject *verdict = Py_None; /* not walked */
        if (program != Py_None) {
            Py_buffer b;
            if (PyObject_GetBuffer(frame, &b, PyBUF_SIMPLE) < 0) {
                Py_DECREF(frame);
                return -1;
            }
            int untagged = response_untagged(program, (const unsigned char *)b.buf, b.len);
            PyBuffer_Release(&b);
            if (untagged && PyTuple_GET_ITEM(token, 5) == Py_False) {
                return append_new(feed->out, frame);
            }
            if (untagged && PyTuple_GET_ITEM(token, 3) == Py_None) {
                int laned = take_by_fetch_lane(self, PyTuple_GET_ITEM(token, 0),
                                               PyTuple_GET_ITEM(token, 1), frame,
                                               PyList_GET_SIZE(feed->out));
                if (laned < 0) {
                    Py_DECREF(frame);
                    return -1;
                }
                if (laned > 0) {
                    return append_new(feed->out, frame); /* skimmed: it goes out as it came */
                }
            }
            verdict = untagged ? Py_True : Py_False;
        }
        item = Py_BuildValue("(OOOONO)", PyTuple_GET_ITEM(token, 0), PyTuple_GET_ITEM(token, 1),
                             PyTuple_GET_ITEM(token, 2), PyTuple_GET_ITEM(token, 3), frame,
                             verdict);
    }
    if (item == NULL) {
        return -1;
    }
    feed->held++;
    return append_new(feed->out, item);
}

/* The frame read in place is whole: it goes out as emit_held sends any held frame. */
static int
emit_assembled(PairingCore *self, Scanner *scanner, Feed *feed)
{
    PyObject *token = scanner->held_token;
    PyObject *frame = scanner->assembly;
    scanner->held_token = NULL;
    scanner->assembly = NULL;
    int failed = emit_held(self, scanner, feed, token, frame);
    Py_DECREF(token);
    return failed;
}

/* FrameScanner.reserve: a writable view of the rest of the frame being held, once its pieces
 * were copied into one bytearray of the frame's size; Py_None when no frame is being held,
 * fewer than min_size of its bytes are still to come, or the frame is larger than max_size. */
static PyObject *
scanner_reserve(Scanner *scanner, Py_ssize_t min_size, Py_ssize_t max_size)
{
    if (scanner->assembly == NULL) {
        if (scanner->held == NULL || scanner->held_remaining < min_size ||
            scanner->held_size + scanner->held_remaining > max_size) {
            Py_RETURN_NONE;
        }
        PyObject *assembly =
            PyByteArray_FromStringAndSize(NULL, scanner->held_size + scanner->held_remaining);
        if (assembly == NULL) {
            return NULL;
        }
        char *into = PyByteArray_AS_STRING(assembly);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(scanner->held); i++) {
            Py_buffer piece;
            if (PyObject_GetBuffer(PyList_GET_ITEM(scanner->held, i), &piece, PyBUF_SIMPLE) < 0) {
                Py_DECREF(assembly);
                return NULL;
            }
            memcpy(into, piece.buf, (size_t)piece.len);
            into += piece.len;
            PyBuffer_Release(&piece);
        }
        Py_CLEAR(scanner->held);
        scanner->assembly = assembly;
    }
    PyObject *whole = PyMemoryView_FromObject(scanner->assembly);
    if (whole == NULL) {
        return NULL;
    }
    PyObject *rest =
        PySequence_GetSlice(whole, scanner->held_size, scanner->held_size + scanner->held_remaining);
    Py_DECREF(whole);
    return rest;
}

static int
frame_size(PairingCore *self, Scanner *scanner, const unsigned char *prefix, Py_ssize_t *size)
{
    int32_t value = be32(prefix);
    if (value < 0 || value > self->max_frame_size) {
        PyErr_Format(self->too_large,
                     "frame size %d is outside 0..%zd (the maximum frame size)", (int)value,
                     self->max_frame_size);
        return -1;
    }
    if (value < scanner->peek_size) {
        PyErr_Format(self->protocol_error, "frame of %d bytes is too short to be a Kafka message",
                     (int)value);
        return -1;
    }
    *size = value;
    return 0;
}

/* framing.FrameScanner.feed, with the classifier built in. */
static PyObject *
scanner_feed(PairingCore *self, Scanner *scanner, PyObject *data)
{
    if (self->protocol_error == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PairingCore.__init__ was not called");
        return NULL;
    }
    Feed feed = {data, {0}, NULL, NULL, 0};
    if (PyObject_GetBuffer(data, &feed.buffer, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *buf = feed.buffer.buf;
    Py_ssize_t end = feed.buffer.len;
    Py_ssize_t peek = scanner->peek_size;
    PyObject *result = NULL;
    feed.out = PyList_New(0);
    if (feed.out == NULL) {
        goto done;
    }
    Py_ssize_t whole = end - SIZE_PREFIX;
    if (peek <= whole && whole <= self->max_frame_size && !scanner->forward_remaining &&
        !scanner->head_len && scanner->held == NULL && scanner->assembly == NULL &&
        end >= SIZE_PREFIX &&
        be32(buf) == whole) {
        /* One whole frame in one read, the usual case for requests and small responses. */
        PyObject *token = classify(self, scanner, buf + SIZE_PREFIX, whole);
        if (token == NULL) {
            goto done;
        }
        int failed;
        if (token == Py_None) {
            Py_INCREF(data);
            failed = append_new(feed.out, data);
        }
        else {
            Py_INCREF(data);
            failed = emit_held(self, scanner, &feed, token, data);
        }
        Py_DECREF(token);
        if (failed < 0) {
            goto done;
        }
        goto finished;
    }
    Py_ssize_t pos = 0;
    Py_ssize_t run_start = -1;
#define FLUSH_RUN(upto)                                                                    \
    do {                                                                                   \
        if (run_start >= 0 && (upto) > run_start) {                                        \
            if (append_new(feed.out, feed_slice(&feed, run_start, (upto))) < 0) {          \
                goto done;                                                                 \
            }                                                                              \
        }                                                                                  \
        run_start = -1;                                                                    \
    } while (0)
    while (pos < end) {
        if (scanner->forward_remaining) {
            Py_ssize_t take = scanner->forward_remaining < end - pos ? scanner->forward_remaining
                                                                     : end - pos;
            if (run_start < 0) {
                run_start = pos;
            }
            pos += take;
            scanner->forward_remaining -= take;
            continue;
        }
        if (scanner->assembly != NULL) {
            Py_ssize_t take =
                scanner->held_remaining < end - pos ? scanner->held_remaining : end - pos;
            memcpy(PyByteArray_AS_STRING(scanner->assembly) + scanner->held_size, buf + pos,
                   (size_t)take);
            scanner->held_size += take;
            pos += take;
            scanner->held_remaining -= take;
            if (!scanner->held_remaining && emit_assembled(self, scanner, &feed) < 0) {
                goto done;
            }
            continue;
        }
        if (scanner->held != NULL) {
            Py_ssize_t take =
                scanner->held_remaining < end - pos ? scanner->held_remaining : end - pos;
            if (append_new(scanner->held, feed_kept(&feed, pos, pos + take)) < 0) {
                Py_CLEAR(scanner->held);
                Py_CLEAR(scanner->held_token);
                goto done;
            }
            scanner->held_size += take;
            pos += take;
            scanner->held_remaining -= take;
            if (!scanner->held_remaining) {
                PyObject *joined = join_pieces(scanner->held);
                PyObject *token = scanner->held_token;
                scanner->held_token = NULL;
                Py_CLEAR(scanner->held);
                int failed = emit_held(self, scanner, &feed, token, joined);
                Py_DECREF(token);
                if (failed < 0) {
                    goto done;
                }
            }
            continue;
        }
        if (!scanner->head_len && end - pos >= SIZE_PREFIX + peek) {
            Py_ssize_t size;
            if (frame_size(self, scanner, buf + pos, &size) < 0) {
                goto done;
            }
            Py_ssize_t start = pos + SIZE_PREFIX;
            PyObject *token = classify(self, scanner, buf + start, size);
            if (token == NULL) {
                goto done;
            }
            if (token == Py_None) {
                Py_DECREF(token);
                if (run_start < 0) {
                    run_start = pos;
                }
                scanner->forward_remaining = SIZE_PREFIX + size;
                continue;
            }
            FLUSH_RUN(pos);
            if (end - start >= size) {
                int failed =
                    emit_held(self, scanner, &feed, token, feed_slice(&feed, pos, start + size));
                Py_DECREF(token);
                if (failed < 0) {
                    goto done;
                }
                pos = start + size;
            }
            else {
                scanner->held = PyList_New(0);
                if (scanner->held == NULL ||
                    append_new(scanner->held, feed_kept(&feed, pos, end)) < 0) {
                    Py_CLEAR(scanner->held);
                    Py_DECREF(token);
                    goto done;
                }
                scanner->held_size = end - pos;
                scanner->held_remaining = size - (end - start);
                scanner->held_token = token;
                pos = end;
            }
            continue;
        }
        /* Slow path: the identifying prefix straddles buffers; keep it back until complete. */
        FLUSH_RUN(pos);
        Py_ssize_t need = SIZE_PREFIX + peek - scanner->head_len;
        Py_ssize_t take = need < end - pos ? need : end - pos;
        memcpy(scanner->head + scanner->head_len, buf + pos, (size_t)take);
        scanner->head_len += take;
        pos += take;
        Py_ssize_t size = 0;
        if (scanner->head_len >= SIZE_PREFIX) {
            if (frame_size(self, scanner, scanner->head, &size) < 0) {
                goto done;
            }
        }
        if (scanner->head_len < SIZE_PREFIX + peek) {
            continue;
        }
        PyObject *head = PyBytes_FromStringAndSize((const char *)scanner->head, scanner->head_len);
        if (head == NULL) {
            goto done;
        }
        scanner->head_len = 0;
        PyObject *token = classify(self, scanner, scanner->head + SIZE_PREFIX, size);
        if (token == NULL) {
            Py_DECREF(head);
            goto done;
        }
        if (token == Py_None) {
            Py_DECREF(token);
            if (append_new(feed.out, head) < 0) {
                goto done;
            }
            scanner->forward_remaining = SIZE_PREFIX + size - (SIZE_PREFIX + peek);
        }
        else {
            Py_ssize_t remaining = size - peek;
            if (!remaining) {
                int failed = emit_held(self, scanner, &feed, token, head);
                Py_DECREF(token);
                if (failed < 0) {
                    goto done;
                }
            }
            else {
                scanner->held = PyList_New(0);
                if (scanner->held == NULL || PyList_Append(scanner->held, head) < 0) {
                    Py_CLEAR(scanner->held);
                    Py_DECREF(head);
                    Py_DECREF(token);
                    goto done;
                }
                Py_DECREF(head);
                scanner->held_size = SIZE_PREFIX + peek;
                scanner->held_remaining = remaining;
                scanner->held_token = token;
            }
        }
    }
    FLUSH_RUN(pos);
#undef FLUSH_RUN
finished:
    result = Py_BuildValue("(On)", feed.out, feed.held);
done:
    Py_XDECREF(feed.out);
    Py_XDECREF(feed.view);
    PyBuffer_Release(&feed.buffer);
    return result;
}

/* -- the type ------------------------------------------------------------------------------- */

static int
read_ranges(PyObject *policy, const char *name, int *low, int *high)
{
    for (int i = 0; i < API_SLOTS; i++) {
        low[i] = 1;
        high[i] = 0;
    }
    PyObject *ranges = PyObject_GetAttrString(policy, name);
    if (ranges == NULL) {
        return -1;
    }
    if (!PyDict_Check(ranges)) {
        Py_DECREF(ranges);
        PyErr_Format(PyExc_TypeError, "policy.%s must be a dict", name);
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t at = 0;
    while (PyDict_Next(ranges, &at, &key, &value)) {
        long api_key = PyLong_AsLong(key);
        int first, last;
        if ((api_key == -1 && PyErr_Occurred()) || !PyArg_ParseTuple(value, "ii", &first, &last)) {
            Py_DECREF(ranges);
            return -1;
        }
        if (api_key < 0 || api_key >= API_SLOTS) {
            Py_DECREF(ranges);
            PyErr_Format(PyExc_ValueError, "api key %ld is outside 0..%d", api_key, API_SLOTS - 1);
            return -1;
        }
        low[api_key] = first;
        high[api_key] = last;
    }
    Py_DECREF(ranges);
    return 0;
}

static int
core_init(PairingCore *self, PyObject *args, PyObject *kwargs)
{
    PyObject *policy, *errors;
    Py_ssize_t max_frame_size;
    if (!PyArg_ParseTuple(args, "OnO", &policy, &max_frame_size, &errors)) {
        return -1;
    }
    PyObject *protocol_error, *too_large;
    if (!PyArg_ParseTuple(errors, "OO", &protocol_error, &too_large)) {
        return -1;
    }
    self->max_frame_size = max_frame_size;
    Py_INCREF(protocol_error);
    Py_XSETREF(self->protocol_error, protocol_error);
    Py_INCREF(too_large);
    Py_XSETREF(self->too_large, too_large);
    if (read_ranges(policy, "requests", self->hold_request_low, self->hold_request_high) < 0 ||
        read_ranges(policy, "responses", self->hold_response_low, self->hold_response_high) < 0) {
        return -1;
    }
    PyObject *walks = PyObject_GetAttrString(policy, "response_walks");
    if (walks == NULL) {
        return -1;
    }
    if (!PyDict_Check(walks)) {
        Py_DECREF(walks);
        PyErr_SetString(PyExc_TypeError, "policy.response_walks must be a dict");
        return -1;
    }
    PyObject *table = PyDict_New();
    memset(self->walked_api, 0, sizeof(self->walked_api));
    PyObject *walk_key, *walk_program;
    Py_ssize_t walk_at = 0;
    while (table != NULL && PyDict_Next(walks, &walk_at, &walk_key, &walk_program)) {
        int api_key, api_version;
        PyObject *code = NULL;
        if (!PyTuple_Check(walk_program) || PyTuple_GET_SIZE(walk_program) != 2 ||
            !PyTuple_Check(PyTuple_GET_ITEM(walk_program, 0)) ||
            PyTuple_GET_SIZE(PyTuple_GET_ITEM(walk_program, 0)) != 3 ||
            !PyArg_ParseTuple(walk_key, "ii", &api_key, &api_version) ||
            api_key < 0 || api_key >= API_SLOTS ||
            (code = PyLong_FromLong(((long)api_key << 16) | (api_version & 0xFFFF))) == NULL ||
            PyDict_SetItem(table, code, walk_program) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError,
                                "policy.response_walks: (api key 0..255, version) -> "
                                "(program, forward when clean)");
            }
            Py_XDECREF(code);
            Py_CLEAR(table);
            break;
        }
        self->walked_api[api_key] = 1;
        Py_DECREF(code);
    }
    Py_DECREF(walks);
    if (table == NULL) {
        return -1;
    }
    Py_XSETREF(self->walks, table);
    PyObject *acks = PyObject_GetAttrString(policy, "produce_acks");
    if (acks == NULL) {
        return -1;
    }
    int parsed = PyArg_ParseTuple(acks, "ii", &self->acks_low, &self->acks_high);
    Py_DECREF(acks);
    if (!parsed) {
        return -1;
    }
    memset(self->known, 0, sizeof(self->known));
    PyObject *known = PyObject_GetAttrString(policy, "known_api_keys");
    if (known == NULL) {
        return -1;
    }
    PyObject *iterator = PyObject_GetIter(known);
    Py_DECREF(known);
    if (iterator == NULL) {
        return -1;
    }
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        long key = PyLong_AsLong(item);
        Py_DECREF(item);
        if (key == -1 && PyErr_Occurred()) {
            break;
        }
        if (key < 0 || key >= API_SLOTS) {
            PyErr_Format(PyExc_ValueError, "api key %ld is outside 0..%d", key, API_SLOTS - 1);
            break;
        }
        self->known[key] = 1;
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *buckets = PyObject_GetAttrString(policy, "latency_buckets");
    if (buckets == NULL) {
        return -1;
    }
    PyObject *sequence = PySequence_Fast(buckets, "policy.latency_buckets must be a sequence");
    Py_DECREF(buckets);
    if (sequence == NULL) {
        return -1;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    if (count > MAX_BUCKETS) {
        Py_DECREF(sequence);
        PyErr_Format(PyExc_ValueError, "at most %d latency buckets", MAX_BUCKETS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        self->buckets[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(sequence, i));
    }
    Py_DECREF(sequence);
    self->bucket_count = (int)count;
    return PyErr_Occurred() ? -1 : 0;
}

static void
scanner_clear(Scanner *scanner)
{
    Py_CLEAR(scanner->held);
    Py_CLEAR(scanner->assembly);
    Py_CLEAR(scanner->held_token);
}

/* Attached states are the owner's objects: they may refer back to the core. */
static int
core_traverse(PairingCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->requests.held);
    Py_VISIT(self->requests.held_token);
    Py_VISIT(self->responses.held);
    Py_VISIT(self->requests.assembly);
    Py_VISIT(self->responses.assembly);
    Py_VISIT(self->responses.held_token);
    for (Py_ssize_t i = 0; i < self->ring_len; i++) {
        Py_VISIT(pending_at(self, i)->state);
    }
    Py_VISIT(self->protocol_error);
    Py_VISIT(self->too_large);
    Py_VISIT(self->walks);
    Py_VISIT(self->lane);
    Py_VISIT(self->fetch_lane);
    Py_VISIT(self->fetch_skims);
    return 0;
}

static int
core_clear(PairingCore *self)
{
    scanner_clear(&self->requests);
    scanner_clear(&self->responses);
    for (Py_ssize_t i = 0; i < self->ring_len; i++) {
        Py_CLEAR(pending_at(self, i)->state);
    }
    Py_CLEAR(self->protocol_error);
    Py_CLEAR(self->too_large);
    Py_CLEAR(self->walks);
    Py_CLEAR(self->lane);
    Py_CLEAR(self->fetch_lane);
    Py_CLEAR(self->fetch_skims);
    return 0;
}

static void
core_dealloc(PairingCore *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    PyMem_Free(self->ring);
    for (int i = 0; i <= API_SLOTS; i++) {
        PyMem_Free(self->counts[i]);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PairingCore *self = (PairingCore *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->requests.peek_size = REQUEST_PEEK;
        self->responses.peek_size = RESPONSE_PEEK;
        self->fetch_lane_low = 1;
        self->fetch_skims = PyList_New(0);
        if (self->fetch_skims == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

static PyObject *
core_from_client(PairingCore *self, PyObject *data)
{
    return scanner_feed(self, &self->requests, data);
}

static PyObject *
core_from_server(PairingCore *self, PyObject *data)
{
    return scanner_feed(self, &self->responses, data);
}

/* FrameScanner.filled, with the pieces made as scanner_feed makes them. */
static PyObject *
scanner_filled(PairingCore *self, Scanner *scanner, PyObject *arg)
{
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (scanner->assembly == NULL) {
        PyErr_SetString(PyExc_ValueError, "no frame is being read in place");
        return NULL;
    }
    if (nbytes < 0 || nbytes > scanner->held_remaining) {
        PyErr_Format(PyExc_ValueError, "%zd bytes cannot have been read into the %zd reserved",
                     nbytes, scanner->held_remaining);
        return NULL;
    }
    Feed feed = {NULL, {0}, NULL, PyList_New(0), 0};
    if (feed.out == NULL) {
        return NULL;
    }
    scanner->held_size += nbytes;
    scanner->held_remaining -= nbytes;
    PyObject *result = NULL;
    if (scanner->held_remaining || emit_assembled(self, scanner, &feed) == 0) {
        result = Py_BuildValue("(On)", feed.out, feed.held);
    }
    Py_DECREF(feed.out);
    return result;
}

static PyObject *
reserve_in(Scanner *scanner, PyObject *args)
{
    Py_ssize_t min_size, max_size;
    if (!PyArg_ParseTuple(args, "nn", &min_size, &max_size)) {
        return NULL;
    }
    return scanner_reserve(scanner, min_size, max_size);
}

static PyObject *
core_request_buffer(PairingCore *self, PyObject *args)
{
    return reserve_in(&self->requests, args);
}

static PyObject *
core_request_filled(PairingCore *self, PyObject *arg)
{
    return scanner_filled(self, &self->requests, arg);
}

static PyObject *
core_response_buffer(PairingCore *self, PyObject *args)
{
    return reserve_in(&self->responses, args);
}

static PyObject *
core_response_filled(PairingCore *self, PyObject *arg)
{
    return scanner_filled(self, &self->responses, arg);
}

static PyObject *
core_attach(PairingCore *self, PyObject *args)
{
    long long seq;
    PyObject *state;
    if (!PyArg_ParseTuple(args, "LO", &seq, &state)) {
        return NULL;
    }
    Pending *p = pending_by_seq(self, seq);
    if (p == NULL) {
        return NULL;
    }
    Py_INCREF(state);
    Py_XSETREF(p->state, state);
    Py_RETURN_NONE;
}

static PyObject *
core_forget(PairingCore *self, PyObject *arg)
{
    long long seq = PyLong_AsLongLong(arg);
    if (seq == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Pending *p = pending_by_seq(self, seq);
    if (p == NULL) {
        return NULL;
    }
    if (p->expects) {
        p->expects = 0;
        self->expecting--;
    }
    Py_RETURN_NONE;
}

static PyObject *
core_hold_requests(PairingCore *self, PyObject *args)
{
    int api_key;
    PyObject *versions;
    if (!PyArg_ParseTuple(args, "iO", &api_key, &versions)) {
        return NULL;
    }
    if (api_key < 0 || api_key >= API_SLOTS) {
        PyErr_Format(PyExc_ValueError, "api key %d is outside 0..%d", api_key, API_SLOTS - 1);
        return NULL;
    }
    int low = 1, high = 0;
    if (versions != Py_None && !PyArg_ParseTuple(versions, "ii", &low, &high)) {
        return NULL;
    }
    self->hold_request_low[api_key] = low;
    self->hold_request_high[api_key] = high;
    Py_RETURN_NONE;
}

static PyObject *
core_take_stats(PairingCore *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *taken = PyList_New(self->next_order);
    if (taken == NULL) {
        return NULL;
    }
    for (int slot = 0; slot <= API_SLOTS; slot++) {
        Counts *c = self->counts[slot];
        if (c == NULL || !c->used) {
            continue;
        }
        PyObject *latency = PyList_New(self->bucket_count + 1);
        if (latency == NULL) {
            Py_DECREF(taken);
            return NULL;
        }
        for (int i = 0; i <= self->bucket_count; i++) {
            PyObject *count = PyLong_FromUnsignedLongLong(c->latency[i]);
            if (count == NULL) {
                Py_DECREF(latency);
                Py_DECREF(taken);
                return NULL;
            }
            PyList_SET_ITEM(latency, i, count);
        }
        PyObject *entry = Py_BuildValue("(i(KKKNd))", slot == OTHER_SLOT ? -1 : slot,
                                        (unsigned long long)c->requests,
                                        (unsigned long long)c->request_bytes,
                                        (unsigned long long)c->response_bytes, latency,
                                        c->latency_sum);
        if (entry == NULL) {
            Py_DECREF(taken);
            return NULL;
        }
        PyList_SET_ITEM(taken, c->order, entry);
    }
    /* Reset only once the whole answer exists: a failure above loses no counts. */
    for (int slot = 0; slot <= API_SLOTS; slot++) {
        if (self->counts[slot] != NULL) {
            memset(self->counts[slot], 0, sizeof(Counts));
        }
    }
    self->next_order = 0;
    return taken;
}

/* Keep `lane` (None: no lane) in *slot with its versions; -1 with TypeError for a lane that
 * cannot be called. */
static int
keep_lane(PyObject *lane, const char *what, PyObject **slot, int low, int high, int *low_slot,
          int *high_slot)
{
    if (lane != Py_None && !PyCallable_Check(lane)) {
        PyErr_Format(PyExc_TypeError, "the %s lane must be callable or None", what);
        return -1;
    }
    Py_XSETREF(*slot, lane == Py_None ? NULL : Py_NewRef(lane));
    *low_slot = low;
    *high_slot = high;
    return 0;
}

static PyObject *
core_set_produce_lane(PairingCore *self, PyObject *args)
{
    PyObject *lane;
    int low = 1, high = 0;
    if (!PyArg_ParseTuple(args, "O(ii)", &lane, &low, &high) ||
        keep_lane(lane, "produce", &self->lane, low, high, &self->lane_low,
                  &self->lane_high) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
core_set_fetch_lane(PairingCore *self, PyObject *args)
{
    PyObject *lane;
    int low = 1, high = 0;
    Py_ssize_t max_size = 0;
    if (!PyArg_ParseTuple(args, "O(ii)n", &lane, &low, &high, &max_size) ||
        keep_lane(lane, "fetch", &self->fetch_lane, low, high, &self->fetch_lane_low,
                  &self->fetch_lane_high) < 0) {
        return NULL;
    }
    self->fetch_lane_max_size = max_size;
    Py_RETURN_NONE;
}

static PyObject *
core_fetch_skims(PairingCore *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->fetch_skims);
}

static PyObject *
core_take_lane_counts(PairingCore *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *taken = Py_BuildValue("(KK)", self->lane_rewritten, self->lane_records);
    if (taken != NULL) {
        self->lane_rewritten = self->lane_records = 0;
    }
    return taken;
}

/* The connection ended: let go of what each direction keeps of a frame (a held or half read
 * one can be 16 MiB), now rather than when the collector frees the core. */
static void
scanner_release(Scanner *scanner)
{
    scanner_clear(scanner);
    scanner->forward_remaining = 0;
    scanner->head_len = 0;
    scanner->held_size = scanner->held_remaining = 0;
}

static PyObject *
core_release(PairingCore *self, PyObject *Py_UNUSED(ignored))
{
    scanner_release(&self->requests);
    scanner_release(&self->responses);
    Py_RETURN_NONE;
}

static PyObject *
core_in_flight(PairingCore *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->expecting);
}

static PyMethodDef core_methods[] = {
    {"from_client", (PyCFunction)core_from_client, METH_O,
     "What to forward and the held requests, in stream order, and how many are held."},
    {"from_server", (PyCFunction)core_from_server, METH_O,
     "What to forward and the held responses, in stream order, and how many are held."},
    {"request_buffer", (PyCFunction)core_request_buffer, METH_VARARGS,
     "Where the rest of a request being held may be read into in place, or None."},
    {"request_filled", (PyCFunction)core_request_filled, METH_O,
     "How many bytes were read into the request buffer: what to forward and the held "
     "requests, as from_client gives them."},
    {"response_buffer", (PyCFunction)core_response_buffer, METH_VARARGS,
     "Where the rest of a response being held may be read into in place, or None."},
    {"response_filled", (PyCFunction)core_response_filled, METH_O,
     "How many bytes were read into the response buffer: what to forward and the held "
     "responses, as from_server gives them."},
    {"attach", (PyCFunction)core_attach, METH_VARARGS,
     "Keep a state with a handed-over request; its response is handed over with it."},
    {"forget", (PyCFunction)core_forget, METH_O, "A handed-over request gets no response."},
    {"hold_requests", (PyCFunction)core_hold_requests, METH_VARARGS,
     "Change which requests of one API are handed over (None: none of them)."},
    {"take_stats", (PyCFunction)core_take_stats, METH_NOARGS,
     "The counts since the last call, per API key (-1 for unknown keys)."},
    {"set_produce_lane", (PyCFunction)core_set_produce_lane, METH_VARARGS,
     "Run Produce requests of the versions given through a lane (None: no lane)."},
    {"take_lane_counts", (PyCFunction)core_take_lane_counts, METH_NOARGS,
     "Requests the lane rebuilt and records it passed on unsampled since the last call."},
    {"release", (PyCFunction)core_release, METH_NOARGS,
     "The connection ended: drop any frame being held or read in place."},
    {"set_fetch_lane", (PyCFunction)core_set_fetch_lane, METH_VARARGS,
     "Run clean Fetch responses of the versions given, up to a size, through a lane (None: no "
     "lane)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef core_getset[] = {
    {"in_flight", (getter)core_in_flight, NULL,
     "Requests that will get a response and have not yet.", NULL},
    {"fetch_skims", (getter)core_fetch_skims, NULL,
     "What the fetch lane made of the responses it forwarded, oldest first, as (where the "
     "response is in what its feed gave out, the lane's result); the owner empties it.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PairingCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "proxy.codec._speedups.PairingCore",
    .tp_basicsize = sizeof(PairingCore),
    .tp_dealloc = (destructor)core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_doc = "Frames and request/response pairing of one connection (see pairing.py).",
    .tp_methods = core_methods,
    .tp_getset = core_getset,
    .tp_init = (initproc)core_init,
    .tp_new = core_new,
};

int
pairing_add_type(PyObject *module)
{
    if (PyType_Ready(&PairingCoreType) < 0) {
        return -1;
    }
    Py_INCREF(&PairingCoreType);
    if (PyModule_AddObject(module, "PairingCore", (PyObject *)&PairingCoreType) < 0) {
        Py_DECREF(&PairingCoreType);
        return -1;
    }
    return 0;
}

package metrics

// queue is a bounded FIFO of records waiting for the database. When full,
// adding a record drops the oldest. It is not safe for concurrent use (the
// recorder's mutex guards it).
type queue struct {
	buf  []dbRecord
	head int // index of the oldest record
	n    int
}

func newQueue(size int) queue {
	return queue{buf: make([]dbRecord, size)}
}

func (q *queue) len() int { return q.n }

// push appends rec, dropping the oldest record when the queue is full, and
// returns how many records it dropped (0 or 1).
func (q *queue) push(rec dbRecord) int {
	dropped := 0
	if q.n == len(q.buf) {
		q.buf[q.head] = nil
		q.head = (q.head + 1) % len(q.buf)
		q.n--
		dropped = 1
	}
	q.buf[(q.head+q.n)%len(q.buf)] = rec
	q.n++
	return dropped
}

// pop removes and returns up to max of the oldest records.
func (q *queue) pop(max int) []dbRecord {
	if max > q.n {
		max = q.n
	}
	out := make([]dbRecord, max)
	for i := range out {
		out[i] = q.buf[q.head]
		q.buf[q.head] = nil
		q.head = (q.head + 1) % len(q.buf)
	}
	q.n -= max
	return out
}

// unpop puts recs, older than everything queued, back at the front, in
// order. When they do not all fit, the oldest are dropped; it returns how
// many.
func (q *queue) unpop(recs []dbRecord) int {
	free := len(q.buf) - q.n
	dropped := 0
	if len(recs) > free {
		dropped = len(recs) - free
		recs = recs[dropped:]
	}
	for i := len(recs) - 1; i >= 0; i-- {
		q.head = (q.head - 1 + len(q.buf)) % len(q.buf)
		q.buf[q.head] = recs[i]
		q.n++
	}
	return dropped
}

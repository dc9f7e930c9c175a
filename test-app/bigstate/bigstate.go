// Package bigstate is the test application's big state: N MiB of memory
// filled deterministically from a seed, one 4 KiB page rewritten per
// counter tick, so that an observer that knows the seed and the counter can
// compute what a restored copy's memory must hash to, byte for byte.
package bigstate

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
)

// PageSize is the size of the page one tick rewrites.
const PageSize = 4096

const mib = 1 << 20

// State is the big state. It is not safe for concurrent use: the app
// guards it with the counter's mutex.
type State struct {
	seed uint64
	mem  []byte
}

// New allocates mb MiB (none when mb <= 0) and fills them from seed
// (ChaCha8 keyed with the seed expanded to 32 bytes).
func New(mb int, seed uint64) *State {
	s := &State{seed: seed, mem: make([]byte, max(mb, 0)*mib)}
	s.fill()
	return s
}

func (s *State) fill() {
	var le [8]byte
	binary.LittleEndian.PutUint64(le[:], s.seed)
	key := sha256.Sum256(le[:])
	c := rand.NewChaCha8(key)
	_, _ = c.Read(s.mem) // never fails
}

// Pages is how many pages the state has.
func (s *State) Pages() int64 { return int64(len(s.mem) / PageSize) }

// Tick rewrites page counter mod Pages with bytes derived from counter
// and the seed alone (a SplitMix64 stream: cheap).
func (s *State) Tick(counter int64) {
	n := s.Pages()
	if n == 0 {
		return
	}
	p := ((counter % n) + n) % n
	page := s.mem[p*PageSize : (p+1)*PageSize]
	x := s.seed ^ uint64(counter)*0x9e3779b97f4a7c15
	for i := 0; i < PageSize; i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(page[i:], z^(z>>31))
	}
}

// Set puts the state where a fresh one is after Tick(1..counter): filled
// again from the seed (unless every page is rewritten anyway), then the
// ticks that later ones do not overwrite (at most Pages of them). The app
// calls it when its counter is set.
func (s *State) Set(counter int64) {
	if counter < s.Pages() {
		s.fill()
	}
	s.ticks(1, counter)
}

// ticks applies Tick(from..to), skipping the ticks a later one overwrites.
func (s *State) ticks(from, to int64) {
	from = max(from, to-s.Pages()+1, 1)
	for c := from; c <= to; c++ {
		s.Tick(c)
	}
}

// Sum is the hex sha256 of the state's memory.
func (s *State) Sum() string {
	h := sha256.Sum256(s.mem)
	return hex.EncodeToString(h[:])
}

// Expected is the Sum of New(mb, seed) after Tick(1..counter): what a copy
// whose counter reads counter must hash to.
func Expected(mb int, seed uint64, counter int64) string {
	s := New(mb, seed)
	s.ticks(1, counter)
	return s.Sum()
}

// Expecter computes Expected for one mb and seed again and again in one
// buffer: a counter at or above the last one costs only its new ticks and
// the hash; a lower one also a refill. Not safe for concurrent use.
type Expecter struct {
	s       *State
	counter int64
}

// NewExpecter allocates the buffer Expected values are computed in.
func NewExpecter(mb int, seed uint64) *Expecter {
	return &Expecter{s: New(mb, seed)}
}

// Expected is Expected(mb, seed, counter).
func (e *Expecter) Expected(counter int64) string {
	if counter >= e.counter {
		e.s.ticks(e.counter+1, counter)
	} else {
		e.s.Set(counter)
	}
	e.counter = counter
	return e.s.Sum()
}

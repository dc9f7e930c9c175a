package bigstate

import (
	"fmt"
	"testing"
)

func TestExpectedMatchesTicks(t *testing.T) {
	// 1 MiB is 256 pages: 600 ticks wrap around it twice.
	s := New(1, 3)
	if got, want := s.Sum(), Expected(1, 3, 0); got != want {
		t.Fatalf("fresh state: Sum %s, Expected(0) %s", got, want)
	}
	e := NewExpecter(1, 3)
	seen := map[string]int64{}
	for c := int64(1); c <= 600; c++ {
		s.Tick(c)
		if c%37 != 0 && c != 255 && c != 256 && c != 257 && c != 600 {
			continue
		}
		sum := s.Sum()
		if want := Expected(1, 3, c); sum != want {
			t.Fatalf("after Tick(1..%d): Sum %s, Expected %s", c, sum, want)
		}
		if got := e.Expected(c); got != sum {
			t.Fatalf("Expecter(%d) = %s, want %s", c, got, sum)
		}
		if prev, ok := seen[sum]; ok {
			t.Fatalf("counters %d and %d have the same sum", prev, c)
		}
		seen[sum] = c
	}
	// Back down: the Expecter refills.
	for _, c := range []int64{10, 300, 5} {
		if got, want := e.Expected(c), Expected(1, 3, c); got != want {
			t.Fatalf("Expecter back to %d = %s, want %s", c, got, want)
		}
	}
}

func TestSet(t *testing.T) {
	for _, c := range []int64{0, 1, 100, 255, 256, 1000} {
		s := New(1, 9)
		for i := int64(1); i <= 777; i++ { // somewhere else first
			s.Tick(i)
		}
		s.Set(c)
		if got, want := s.Sum(), Expected(1, 9, c); got != want {
			t.Errorf("Set(%d): Sum %s, want %s", c, got, want)
		}
	}
}

func TestSumSensitivity(t *testing.T) {
	base := New(1, 1)
	sum := base.Sum()
	cases := []struct {
		name   string
		change func(s *State)
	}{
		{"first byte flipped", func(s *State) { s.mem[0] ^= 1 }},
		{"last byte flipped", func(s *State) { s.mem[len(s.mem)-1] ^= 0x80 }},
		{"one tick", func(s *State) { s.Tick(1) }},
	}
	for _, tc := range cases {
		s := New(1, 1)
		tc.change(s)
		if s.Sum() == sum {
			t.Errorf("%s: sum unchanged", tc.name)
		}
	}
	if New(1, 2).Sum() == sum {
		t.Error("seeds 1 and 2 fill the same memory")
	}
	if Expected(1, 1, 5) == Expected(1, 1, 6) {
		t.Error("counters 5 and 6 expect the same sum")
	}
}

func TestEmpty(t *testing.T) {
	s := New(0, 1)
	s.Tick(5) // no pages: nothing to do, no panic
	if s.Pages() != 0 || s.Sum() != Expected(0, 1, 5) {
		t.Fatalf("empty state: pages %d sum %s", s.Pages(), s.Sum())
	}
}

func BenchmarkSum100MB(b *testing.B) {
	s := New(100, 1)
	b.SetBytes(int64(len(s.mem)))
	for b.Loop() {
		_ = s.Sum()
	}
}

func BenchmarkNew100MB(b *testing.B) {
	b.SetBytes(100 << 20)
	for b.Loop() {
		_ = New(100, 1)
	}
}

func BenchmarkTick(b *testing.B) {
	s := New(100, 1)
	var c int64
	for b.Loop() {
		c++
		s.Tick(c)
	}
}

func ExampleExpected() {
	s := New(1, 42)
	for c := int64(1); c <= 10; c++ {
		s.Tick(c)
	}
	fmt.Println(s.Sum() == Expected(1, 42, 10))
	// Output: true
}

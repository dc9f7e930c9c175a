package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/test-app/bigstate"
)

func get(t *testing.T, h http.Handler, method, path, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	var m map[string]any
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return rec.Code, m
}

func TestAPI(t *testing.T) {
	a := &app{lastTick: time.Now()}
	h := a.routes()
	if code, m := get(t, h, "GET", "/state", ""); code != 200 || m["counter"] != 0.0 {
		t.Fatalf("GET /state: %d %v", code, m)
	}
	if code, m := get(t, h, "POST", "/state", `{"counter":41}`); code != 200 || m["counter"] != 41.0 {
		t.Fatalf("POST /state: %d %v", code, m)
	}
	if code, m := get(t, h, "GET", "/state", ""); code != 200 || m["counter"] != 41.0 {
		t.Fatalf("GET /state after POST: %d %v", code, m)
	}
	for _, bad := range []string{``, `{}`, `{"counter":"x"}`, `nonsense`} {
		if code, _ := get(t, h, "POST", "/state", bad); code != 400 {
			t.Errorf("POST /state %q: %d, want 400", bad, code)
		}
	}
	if code, m := get(t, h, "GET", "/restore", ""); code != 200 || m["restore"] != false || m["counter"] != 41.0 {
		t.Fatalf("GET /restore: %d %v", code, m)
	}
	if code, _ := get(t, h, "GET", "/health", ""); code != 200 {
		t.Fatalf("GET /health: %d", code)
	}
}

func TestTickGapMarksRestore(t *testing.T) {
	a := &app{lastTick: time.Now()}
	a.tick(a.lastTick.Add(100 * time.Millisecond))
	if a.restored || a.counter != 1 {
		t.Fatalf("after a normal tick: restored=%t counter=%d", a.restored, a.counter)
	}
	a.tick(a.lastTick.Add(5 * time.Second))
	if !a.restored || a.counter != 2 {
		t.Fatalf("after a 5 s gap: restored=%t counter=%d", a.restored, a.counter)
	}
}

func TestChecksum(t *testing.T) {
	// Without big state: 404, with a message that says why.
	plain := (&app{lastTick: time.Now()}).routes()
	rec := httptest.NewRecorder()
	plain.ServeHTTP(rec, httptest.NewRequest("GET", "/checksum", nil))
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "-state-mb") {
		t.Fatalf("GET /checksum without big state: %d %q", rec.Code, rec.Body.String())
	}

	// With 1 MiB: the sum is the one the reported counter implies, after
	// ticks and after a POST /state.
	const seed = 5
	a := &app{lastTick: time.Now(), state: bigstate.New(1, seed)}
	h := a.routes()
	now := a.lastTick
	check := func(wantCounter int64) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/checksum", nil))
		var body struct {
			Counter *int64 `json:"counter"`
			SHA256  string `json:"sha256"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != 200 || body.Counter == nil {
			t.Fatalf("GET /checksum: %d %q (%v)", rec.Code, rec.Body.String(), err)
		}
		if *body.Counter != wantCounter {
			t.Fatalf("GET /checksum: counter %d, want %d", *body.Counter, wantCounter)
		}
		if want := bigstate.Expected(1, seed, *body.Counter); body.SHA256 != want {
			t.Fatalf("GET /checksum at counter %d: sha256 %s, want %s", *body.Counter, body.SHA256, want)
		}
	}
	check(0)
	for i := 0; i < 300; i++ { // past the 256 pages of 1 MiB
		now = now.Add(100 * time.Millisecond)
		a.tick(now)
	}
	check(300)
	if code, _ := get(t, h, "POST", "/state", `{"counter":41}`); code != 200 {
		t.Fatalf("POST /state: %d", code)
	}
	check(41)
	a.tick(now.Add(100 * time.Millisecond))
	check(42)
}

// TestChecksumWhileTicking hashes while the counter ticks (run with
// -race): each answer is the sum its counter implies, and the ticks made
// during a hash reach the memory afterwards.
func TestChecksumWhileTicking(t *testing.T) {
	const seed = 11
	a := &app{lastTick: time.Now(), state: bigstate.New(1, seed)}
	done := make(chan struct{})
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		now := a.lastTick
		for {
			select {
			case <-done:
				return
			default:
			}
			now = now.Add(100 * time.Millisecond)
			a.tick(now)
		}
	}()
	for i := 0; i < 20; i++ {
		c, sum := a.checksum()
		if want := bigstate.Expected(1, seed, c); sum != want {
			close(done)
			<-ticked
			t.Fatalf("checksum %d at counter %d: %s, want %s", i, c, sum, want)
		}
	}
	close(done)
	<-ticked
	c, sum := a.checksum()
	if want := bigstate.Expected(1, seed, c); sum != want || c == 0 {
		t.Fatalf("after the ticks: counter %d sum %s, want %s", c, sum, want)
	}
	if a.restored {
		t.Fatal("ticks during hashes marked the app restored")
	}
	if cap(a.pending) == 0 {
		t.Fatal("no tick came during a hash: the test did not test the queue")
	}
}

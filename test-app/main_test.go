package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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

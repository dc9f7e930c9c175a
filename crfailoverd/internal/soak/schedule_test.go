package soak

import (
	"reflect"
	"testing"
	"time"
)

var nodes5 = []string{"n1", "n2", "n3", "n4", "n5"}

func TestScheduleDeterministic(t *testing.T) {
	c := ScheduleConfig{Seed: 1, Duration: 2 * time.Minute, Nodes: nodes5}
	a, b := Schedule(c), Schedule(c)
	if len(a) == 0 {
		t.Fatal("2-minute schedule of seed 1 is empty")
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
}

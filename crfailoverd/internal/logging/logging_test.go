package logging

import "testing"

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{
		"workload": "WORKLOAD", "container_id": "CONTAINER_ID", "duration-ms": "DURATION_MS",
		"_x": "X", "9lives": "LIVES", "": "FIELD", "a.b": "A_B",
	} {
		if got := FieldName(in); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

package controller

import (
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// The kinds of the agent's application failures: only an exit and a
// failed probe are the application's own; anything else is not told.
func TestAgentFailKind(t *testing.T) {
	for _, tc := range []struct {
		reason string
		want   state.FailKind
	}{
		{"container exited", state.FailExited},
		{"liveness probe failed 3 times: GET http://10.0.0.5:8080/health: 500 Internal Server Error", state.FailProbe},
		{"no copy running on n1", ""},
		{"migration failed: boom", ""},
		{"fenced: no quorum contact", ""},
		{"", ""},
	} {
		if got := agentFailKind(tc.reason); got != tc.want {
			t.Errorf("agentFailKind(%q) = %q, want %q", tc.reason, got, tc.want)
		}
	}
}

package testbed

import (
	"net"
	"os"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

// TestWritePKIDataKey: the bed's data key is one the daemon loads (0600,
// an age identity), and a new bed gets a new one.
func TestWritePKIDataKey(t *testing.T) {
	p := pkiAt(t.TempDir())
	nodes := map[string]net.IP{"n1": net.ParseIP("10.0.0.1")}
	if err := writePKI(p, nodes); err != nil {
		t.Fatal(err)
	}
	if _, err := seal.Load(p.DataKey()); err != nil {
		t.Fatalf("the bed's data key does not load: %v", err)
	}
	first, err := os.ReadFile(p.DataKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := writePKI(p, nodes); err != nil {
		t.Fatal(err)
	}
	second, err := os.ReadFile(p.DataKey())
	if err != nil {
		t.Fatal(err)
	}
	if string(first) == string(second) {
		t.Errorf("a new bed kept the old data key")
	}
}

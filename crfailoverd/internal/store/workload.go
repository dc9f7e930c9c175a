package store

import (
	"fmt"
	"strings"
)

// Workload identifies a checkpointed container: kubernetes namespace, pod
// name, container name.
type Workload struct{ Namespace, Pod, Container string }

// maxLabel is the longest accepted part (a DNS-1123 subdomain).
const maxLabel = 253

// maxDirName is the longest directory name most Linux file systems accept
// (NAME_MAX); the workload's directory name must fit.
const maxDirName = 255

// String returns "namespace/pod/container".
func (w Workload) String() string {
	return w.Namespace + "/" + w.Pod + "/" + w.Container
}

// ParseWorkload parses the form produced by [Workload.String] and validates
// each part.
func ParseWorkload(s string) (Workload, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return Workload{}, fmt.Errorf("invalid workload %q: want namespace/pod/container, got %d part(s)", s, len(parts))
	}
	w := Workload{Namespace: parts[0], Pod: parts[1], Container: parts[2]}
	if err := w.Validate(); err != nil {
		return Workload{}, err
	}
	return w, nil
}

// Validate reports whether each part is a DNS-1123-ish name: 1..253
// characters of lowercase alphanumerics, '-' and '.', starting and ending
// with an alphanumeric; and whether the on-disk directory name fits.
func (w Workload) Validate() error {
	for _, p := range []struct{ what, v string }{
		{"namespace", w.Namespace}, {"pod", w.Pod}, {"container", w.Container},
	} {
		if why := checkLabel(p.v); why != "" {
			return fmt.Errorf("invalid workload %q: %s %q %s", w.String(), p.what, p.v, why)
		}
	}
	if n := len(w.dirName()); n > maxDirName {
		return fmt.Errorf("invalid workload %q: names too long to store (%d > %d bytes combined)", w.String(), n, maxDirName)
	}
	return nil
}

// checkLabel returns why s is not an acceptable name part, or "".
func checkLabel(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxLabel:
		return fmt.Sprintf("is %d characters long, at most %d allowed", len(s), maxLabel)
	case !isAlnum(s[0]) || !isAlnum(s[len(s)-1]):
		return "must start and end with a lowercase letter or digit"
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '.' {
			return fmt.Sprintf("contains %q; only lowercase letters, digits, '-' and '.' are allowed", c)
		}
	}
	return ""
}

func isAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// dirName is the workload's directory under the store root. Kubernetes
// names contain no '_', so the mapping is reversible.
func (w Workload) dirName() string {
	return w.Namespace + "_" + w.Pod + "_" + w.Container
}

// parseDirName is the inverse of dirName.
func parseDirName(name string) (Workload, bool) {
	parts := strings.Split(name, "_")
	if len(parts) != 3 {
		return Workload{}, false
	}
	w := Workload{Namespace: parts[0], Pod: parts[1], Container: parts[2]}
	return w, w.Validate() == nil
}

// MarshalText encodes the workload as its string form, so that it appears
// as "namespace/pod/container" in JSON.
func (w Workload) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

// UnmarshalText parses the string form.
func (w *Workload) UnmarshalText(b []byte) error {
	v, err := ParseWorkload(string(b))
	if err != nil {
		return err
	}
	*w = v
	return nil
}

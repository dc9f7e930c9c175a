package membership

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// NewKey makes a random 32-byte gossip key, base64-encoded.
func NewKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// DecodeKey decodes a base64 gossip key of 16, 24 or 32 bytes (AES-128,
// -192 or -256).
func DecodeKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key is not base64: %w", err)
	}
	switch len(b) {
	case 16, 24, 32:
		return b, nil
	}
	return nil, fmt.Errorf("gossip key is %d bytes, want 16, 24 or 32", len(b))
}

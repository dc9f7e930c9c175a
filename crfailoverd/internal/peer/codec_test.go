package peer

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestCodec(t *testing.T) {
	var c codec
	data := bytes.Repeat([]byte{0, 1, 2, 0xff}, 1000)
	b, err := c.Marshal(&chunk{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1+len(data) || b[0] != tagChunk {
		t.Errorf("chunk encodes to %d bytes with tag %#x, want %d raw bytes after tag %#x", len(b), b[0], len(data), tagChunk)
	}
	var got chunk
	if err := c.Unmarshal(b, &got); err != nil || !bytes.Equal(got.Data, data) {
		t.Errorf("chunk round trip: %v", err)
	}
	b[1] = 42 // the decoded chunk does not alias the message buffer
	if got.Data[0] != 0 {
		t.Error("decoded chunk aliases the message buffer")
	}

	h := header{Workload: "ns/pod/ctr", Seq: 9, SHA256: strings.Repeat("ab", 32), Size: 123, Created: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC), Duration: time.Second}
	b, err = c.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != tagJSON || !strings.Contains(string(b[1:]), `"workload":"ns/pod/ctr"`) {
		t.Errorf("header encodes to %q", b)
	}
	var h2 header
	if err := c.Unmarshal(b, &h2); err != nil || h2 != h {
		t.Errorf("header round trip: %+v, %v", h2, err)
	}
	if err := c.Unmarshal(b, &got); err == nil {
		t.Error("a JSON message decoded as a chunk")
	}
	if err := c.Unmarshal(nil, &h2); err == nil {
		t.Error("an empty message decoded")
	}
}

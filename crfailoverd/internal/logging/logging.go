// Package logging sets up crfailoverd's structured logs: native journald
// fields when stderr is connected to the journal (every slog key becomes an
// upper-case field, e.g. WORKLOAD=default/counter/counter, filterable with
// journalctl -u crfailoverd WORKLOAD=...), text or JSON on stderr
// otherwise.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"unicode"

	"github.com/coreos/go-systemd/v22/journal"
)

// Formats.
const (
	FormatAuto    = "auto"
	FormatJournal = "journal"
	FormatText    = "text"
	FormatJSON    = "json"
)

// New returns a logger in format writing at level (which may be changed
// later, on reload). auto means journal when stderr is the journal, text
// otherwise. It returns the format chosen.
func New(format string, level *slog.LevelVar, stderr io.Writer) (*slog.Logger, string) {
	if format == FormatAuto || format == "" {
		format = FormatText
		if ok, _ := journal.StderrIsJournalStream(); ok && journal.Enabled() {
			format = FormatJournal
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case FormatJournal:
		return slog.New(&journalHandler{level: level, fallback: slog.NewTextHandler(stderr, opts)}), format
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(stderr, opts)), format
	}
	return slog.New(slog.NewTextHandler(stderr, opts)), FormatText
}

// journalHandler sends records with journald's native protocol.
type journalHandler struct {
	level    slog.Leveler
	attrs    []slog.Attr
	group    string
	fallback slog.Handler
	once     sync.Once
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	vars := map[string]string{"SYSLOG_IDENTIFIER": "crfailoverd", "LEVEL": r.Level.String()}
	var walk func(prefix string, a slog.Attr)
	walk = func(prefix string, a slog.Attr) {
		a.Value = a.Value.Resolve()
		if a.Value.Kind() == slog.KindGroup {
			for _, g := range a.Value.Group() {
				walk(prefix+a.Key+"_", g)
			}
			return
		}
		vars[FieldName(prefix+a.Key)] = a.Value.String()
	}
	for _, a := range h.attrs {
		walk(h.group, a)
	}
	r.Attrs(func(a slog.Attr) bool {
		walk(h.group, a)
		return true
	})
	msg := r.Message
	// Keep the message readable in plain `journalctl` output too.
	if err, ok := vars["ERR"]; ok {
		msg += ": " + err
	}
	if err := journal.Send(msg, priority(r.Level), vars); err != nil {
		h.once.Do(func() { fmt.Fprintln(os.Stderr, "crfailoverd: journald unreachable, logging to stderr:", err) })
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &journalHandler{level: h.level, group: h.group, fallback: h.fallback.WithAttrs(as)}
	n.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return n
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{level: h.level, attrs: h.attrs, group: h.group + name + "_", fallback: h.fallback.WithGroup(name)}
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}

// FieldName turns a slog key into a journald field name: upper case,
// letters, digits and underscores, not starting with an underscore or
// digit.
func FieldName(key string) string {
	var b strings.Builder
	for _, r := range key {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(unicode.ToUpper(r))
		default:
			b.WriteByte('_')
		}
	}
	s := strings.TrimLeft(b.String(), "_0123456789")
	if s == "" {
		return "FIELD"
	}
	return s
}

package archive

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
)

// DefaultMaxBytes is the default of both size limits of a Walker: per
// member and per archive (16 GiB; config store.max_member_bytes and
// store.max_archive_bytes change it with SetDefaultLimits).
const DefaultMaxBytes int64 = 16 << 30

// DefaultMaxMembers is the default limit of members in one archive. A
// CRIU checkpoint of one container holds a few hundred files; every member
// costs the Walker the memory of its name.
const DefaultMaxMembers = 1 << 16

// MaxNameBytes is the longest member name accepted (Linux's PATH_MAX): a
// PAX record can carry a name of up to a megabyte, and the Walker keeps
// every name it has seen.
const MaxNameBytes = 4096

var defaultMember, defaultTotal atomic.Int64

func init() {
	defaultMember.Store(DefaultMaxBytes)
	defaultTotal.Store(DefaultMaxBytes)
}

// SetDefaultLimits sets the limits that Options fields left at zero take:
// the most bytes of one member and the most bytes of one archive (the sum
// of its members' sizes, and the bytes of its tar stream). A value of 0 or
// less keeps that default. The daemon calls it once at start, from its
// configuration, before it reads any archive.
func SetDefaultLimits(member, total int64) {
	if member > 0 {
		defaultMember.Store(member)
	}
	if total > 0 {
		defaultTotal.Store(total)
	}
}

// DefaultLimits returns the limits set by SetDefaultLimits (or the
// package's defaults).
func DefaultLimits() (member, total int64) {
	return defaultMember.Load(), defaultTotal.Load()
}

// Options tunes a Walker. The zero value is the strict default that every
// reader of untrusted archives uses: the default limits and no
// cancellation.
type Options struct {
	// MaxMemberBytes is the most bytes one regular file may hold (0: the
	// default, see SetDefaultLimits). A header announcing more is refused
	// before any of its data is read.
	MaxMemberBytes int64
	// MaxTotalBytes bounds the archive (0: the default): the sum of its
	// members' sizes, checked at each header before its data is read, and
	// the bytes of the tar stream read (uncompressed: headers, padding and
	// what follows the end-of-archive marker included).
	MaxTotalBytes int64
	// MaxMembers is the most members (files and directories) an archive
	// may have (0: DefaultMaxMembers).
	MaxMembers int
	// Context, when not nil, is checked before each header and each read;
	// once it is done the walk ends with its error, wrapped with the
	// member it stopped at.
	Context context.Context
}

func (o Options) withDefaults() Options {
	member, total := DefaultLimits()
	if o.MaxMemberBytes <= 0 {
		o.MaxMemberBytes = member
	}
	if o.MaxTotalBytes <= 0 {
		o.MaxTotalBytes = total
	}
	if o.MaxMembers <= 0 {
		o.MaxMembers = DefaultMaxMembers
	}
	if o.Context == nil {
		o.Context = context.Background()
	}
	return o
}

// admit applies the Options' limits to a member that passed check, from
// its header alone: nothing of its data has been read yet.
func (w *Walker) admit(m *Member) error {
	raw := m.Header.Name
	if w.members >= w.opts.MaxMembers {
		return &MemberError{Name: raw, Err: ErrTooLarge, Size: int64(w.members) + 1, Limit: int64(w.opts.MaxMembers),
			Detail: fmt.Sprintf("member %d of an archive limited to %d members", w.members+1, w.opts.MaxMembers)}
	}
	if m.Size > w.opts.MaxMemberBytes {
		return &MemberError{Name: raw, Err: ErrTooLarge, Size: m.Size, Limit: w.opts.MaxMemberBytes,
			Detail: fmt.Sprintf("%d bytes, above the limit of %d bytes per member (store.max_member_bytes)", m.Size, w.opts.MaxMemberBytes)}
	}
	// w.total is at most the limit; compared without overflowing.
	if m.Size > w.opts.MaxTotalBytes-w.total {
		total := w.total + min(m.Size, math.MaxInt64-w.total)
		return &MemberError{Name: raw, Err: ErrTooLarge, Size: total, Limit: w.opts.MaxTotalBytes,
			Detail: fmt.Sprintf("%d bytes, which bring the archive's members to %d bytes, above the limit of %d bytes per archive (store.max_archive_bytes)",
				m.Size, total, w.opts.MaxTotalBytes)}
	}
	w.members++
	w.total += m.Size
	return nil
}

// streamTooLarge is the refusal of a tar stream that passed the total
// limit after n bytes, named after the member being read or the last one
// before the point it passed it.
func (w *Walker) streamTooLarge(n int64) error {
	return &MemberError{Name: w.last, Err: ErrTooLarge, Size: n, Limit: w.opts.MaxTotalBytes,
		Detail: fmt.Sprintf("the tar stream passes the limit of %d bytes per archive (store.max_archive_bytes) in or after this member (%d bytes read)",
			w.opts.MaxTotalBytes, n)}
}

// isContextError reports whether err is a context's cancellation or
// deadline.
func isContextError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

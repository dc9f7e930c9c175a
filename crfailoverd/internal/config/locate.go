package config

import (
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// The toml package records the position of every key but does not export
// it; it only reports it in the ParseError returned when a value's
// UnmarshalTOML fails. locator uses that: to find the line of a key it
// decodes the document again into a struct type, built for that key, whose
// only field at the key is a lineProbe.

// errProbe is what lineProbe returns to make the decoder report a position.
var errProbe = errors.New("config: line probe")

// lineProbe fails to decode on purpose.
type lineProbe struct{}

func (lineProbe) UnmarshalTOML(any) error { return errProbe }

// ignored decodes anything and keeps nothing.
type ignored struct{}

func (ignored) UnmarshalTOML(any) error { return nil }

// locator finds the lines of keys in a document that parsed successfully.
type locator struct {
	doc   string
	tree  map[string]any
	md    toml.MetaData
	cache map[string]int // key → line
}

// line returns the line where key is defined, or 0 if key is not in the
// document (its value is a default) or its line cannot be found.
func (l *locator) line(key []string) int {
	s := toml.Key(key).String()
	n, ok := l.cache[s]
	if !ok {
		n = l.find(key)
		l.cache[s] = n
	}
	return n
}

// find returns the line of key, uncached.
func (l *locator) find(key []string) int {
	if !l.md.IsDefined(key...) {
		return 0
	}
	if n := l.probe(key); n > 0 {
		return n
	}
	// A table created implicitly, by [a.b] or a.b = 1, has no position of
	// its own: use the first key defined below it (trying a few at most).
	tries := 0
	for _, k := range l.md.Keys() {
		if len(k) <= len(key) || !slices.Equal(k[:len(key)], key) {
			continue
		}
		if n := l.probe(k); n > 0 {
			return n
		}
		if tries++; tries == 3 {
			break
		}
	}
	return 0
}

// probe returns the position the decoder records for key, or 0.
func (l *locator) probe(key []string) int {
	t := reflect.TypeFor[lineProbe]()
	for i := len(key) - 1; i >= 0; i-- {
		fields := []reflect.StructField{field(0, key[i], t)}
		// The decoder matches fields case-insensitively when no field matches
		// exactly, so every case variant of key[i] needs a field of its own.
		if m, ok := l.table(key[:i]); ok {
			for k := range m {
				if k != key[i] && strings.EqualFold(k, key[i]) {
					fields = append(fields, field(len(fields), k, reflect.TypeFor[ignored]()))
				}
			}
		}
		t = reflect.StructOf(fields)
	}
	_, err := toml.Decode(l.doc, reflect.New(t).Interface())
	var pe toml.ParseError
	if errors.As(err, &pe) && pe.Message == errProbe.Error() && pe.LastKey == toml.Key(key).String() {
		return pe.Position.Line
	}
	return 0
}

// table returns the table at path in the parsed tree.
func (l *locator) table(path []string) (map[string]any, bool) {
	m := l.tree
	for _, k := range path {
		var ok bool
		if m, ok = m[k].(map[string]any); !ok {
			return nil, false
		}
	}
	return m, true
}

// field returns struct field number i, decoded from the TOML key key.
func field(i int, key string, t reflect.Type) reflect.StructField {
	return reflect.StructField{
		Name: "F" + strconv.Itoa(i),
		Type: t,
		Tag:  reflect.StructTag("toml:" + strconv.Quote(key)),
	}
}

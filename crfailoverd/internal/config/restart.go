package config

import (
	"reflect"
	"slices"
)

// Whether a SIGHUP reload applies a key is marked on the Config structs with
// the reload tag: reload:"live" on a table (a Config field) makes all of its
// keys reloadable, reload:"live" on a key makes that key reloadable, and
// reload:"restart" on a key keeps it restart-only inside a live table. Keys
// without either need a restart.
const (
	reloadTag     = "reload"
	reloadLive    = "live"
	reloadRestart = "restart"
)

// RestartNeeded returns the keys (dotted TOML names such as "node.name")
// whose values differ between old and new and which a reload cannot apply,
// sorted. It is nil when every change is reloadable.
func RestartNeeded(old, new Config) []string {
	var keys []string
	forEachKey(func(key string, live bool, index []int) {
		if live {
			return
		}
		a := reflect.ValueOf(old).FieldByIndex(index).Interface()
		b := reflect.ValueOf(new).FieldByIndex(index).Interface()
		if !reflect.DeepEqual(a, b) {
			keys = append(keys, key)
		}
	})
	slices.Sort(keys)
	return keys
}

// ReloadableKeys returns the keys a reload applies, sorted.
func ReloadableKeys() []string {
	var keys []string
	forEachKey(func(key string, live bool, _ []int) {
		if live {
			keys = append(keys, key)
		}
	})
	slices.Sort(keys)
	return keys
}

// forEachKey calls f for every key of Config, in struct order, with its
// dotted name, whether a reload applies it and its field index in Config.
func forEachKey(f func(key string, live bool, index []int)) {
	ct := reflect.TypeFor[Config]()
	for i := range ct.NumField() {
		sec := ct.Field(i)
		secLive := sec.Tag.Get(reloadTag) == reloadLive
		for j := range sec.Type.NumField() {
			fld := sec.Type.Field(j)
			live := secLive
			switch fld.Tag.Get(reloadTag) {
			case reloadLive:
				live = true
			case reloadRestart:
				live = false
			}
			f(sec.Tag.Get("toml")+"."+fld.Tag.Get("toml"), live, []int{i, j})
		}
	}
}

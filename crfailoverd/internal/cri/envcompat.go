package cri

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"unicode/utf8"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// envValuesAsBase64 rewrites the values of the "envs" list of a recorded
// container configuration from text to base64; ok is false when there is
// nothing to rewrite.
func envValuesAsBase64(config []byte) ([]byte, bool) {
	var c map[string]json.RawMessage
	if json.Unmarshal(config, &c) != nil {
		return nil, false
	}
	var envs []map[string]any
	if json.Unmarshal(c["envs"], &envs) != nil || len(envs) == 0 {
		return nil, false
	}
	for _, kv := range envs {
		if s, isText := kv["value"].(string); isText {
			kv["value"] = base64.StdEncoding.EncodeToString([]byte(s))
		}
	}
	b, err := json.Marshal(envs)
	if err != nil {
		return nil, false
	}
	c["envs"] = b
	out, err := json.Marshal(c)
	return out, err == nil
}

// envFromSpec sets the value of each environment variable of c from env
// (the runtime spec's KEY=VALUE list), where env has it.
func envFromSpec(c *runtimeapi.ContainerConfig, env []string) {
	values := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			values[k] = v
		}
	}
	for _, kv := range c.GetEnvs() {
		if v, ok := values[kv.Key]; ok {
			kv.Value = []byte(v)
		}
	}
}

// runtimeEnv is the environment of the runtime spec in a verbose status
// (info["info"].runtimeSpec.process.env); nil when there is none.
func runtimeEnv(info map[string]string) []string {
	var v struct {
		RuntimeSpec struct {
			Process struct {
				Env []string `json:"env"`
			} `json:"process"`
		} `json:"runtimeSpec"`
	}
	if json.Unmarshal([]byte(info["info"]), &v) != nil {
		return nil
	}
	return v.RuntimeSpec.Process.Env
}

// envFromJSON decides each environment value of c from the recorded JSON
// when there is no runtime spec to ask: a value that is base64 of UTF-8
// text is taken as bytes written by a runtime with the newer CRI API, any
// other as the text itself ("8080" and "true" are valid base64, but not
// of text).
func envFromJSON(c *runtimeapi.ContainerConfig, config []byte) {
	var raw struct {
		Envs []struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"envs"`
	}
	if json.Unmarshal(config, &raw) != nil {
		return
	}
	values := map[string]string{}
	for _, kv := range raw.Envs {
		v := kv.Value
		if b, err := base64.StdEncoding.DecodeString(v); err == nil && utf8.Valid(b) {
			v = string(b)
		}
		values[kv.Key] = v
	}
	for _, kv := range c.GetEnvs() {
		if v, ok := values[kv.Key]; ok {
			kv.Value = []byte(v)
		}
	}
}

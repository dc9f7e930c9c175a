package cri

import (
	"encoding/base64"
	"encoding/json"
	"strings"

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

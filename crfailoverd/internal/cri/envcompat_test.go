package cri

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A runtime built with an older CRI API writes KeyValue.value as text;
// this CRI API has it as bytes (base64 in JSON). Both decode, and the
// runtime spec's environment decides the values.
func TestConfigFromInfoEnvValues(t *testing.T) {
	spec := `"runtimeSpec":{"ociVersion":"1.0.0","process":{"cwd":"/","env":["PATH=/","GREETING=abcd","EMPTY="]}}`
	for name, envs := range map[string]string{
		"text (older CRI API)":   `[{"key":"PATH","value":"/"},{"key":"GREETING","value":"abcd"},{"key":"EMPTY","value":""}]`,
		"base64 (newer CRI API)": `[{"key":"PATH","value":"Lw=="},{"key":"GREETING","value":"YWJjZA=="},{"key":"EMPTY","value":""}]`,
		"text that looks base64": `[{"key":"PATH","value":"Lw=="},{"key":"GREETING","value":"abcd"},{"key":"EMPTY"}]`,
	} {
		info := map[string]string{"info": `{"config":{"metadata":{"name":"app"},"envs":` + envs + `},` + spec + `}`}
		c := &runtimeapi.ContainerConfig{}
		ok, err := configFromInfo(info, c)
		if err != nil || !ok {
			t.Fatalf("%s: %v %v", name, ok, err)
		}
		got := map[string]string{}
		for _, kv := range c.Envs {
			got[kv.Key] = string(kv.Value)
		}
		if got["PATH"] != "/" || got["GREETING"] != "abcd" || got["EMPTY"] != "" || len(got) != 3 || c.Metadata.GetName() != "app" {
			t.Errorf("%s: envs %v", name, got)
		}
	}
	// Without a spec, text that is valid base64 of no text stays text.
	c0 := &runtimeapi.ContainerConfig{}
	if ok, err := configFromInfo(map[string]string{"info": `{"config":{"envs":[{"key":"PORT","value":"8080"},{"key":"ON","value":"true"},{"key":"B","value":"YWJjZA=="}]}}`}, c0); !ok || err != nil ||
		string(c0.Envs[0].Value) != "8080" || string(c0.Envs[1].Value) != "true" || string(c0.Envs[2].Value) != "abcd" {
		t.Errorf("no spec, base64-looking text: %v %v %v", ok, err, c0.Envs)
	}
	// Without a spec the text is still decoded, as text.
	c := &runtimeapi.ContainerConfig{}
	if ok, err := configFromInfo(map[string]string{"info": `{"config":{"envs":[{"key":"PATH","value":"/"}]}}`}, c); !ok || err != nil || string(c.Envs[0].Value) != "/" {
		t.Errorf("no spec: %v %v %v", ok, err, c.Envs)
	}
	// Something else that does not decode is an error naming it.
	if _, err := configFromInfo(map[string]string{"info": `{"config":{"metadata":"x"}}`}, c); err == nil {
		t.Error("a config of an unknown format decoded")
	}
}

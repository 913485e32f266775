package gossip

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // in the error; "" for none
	}{
		{"default", func(*Config) {}, ""},
		{"coordinator with keys", func(c *Config) {
			c.Role = RoleCoordinator
			c.SecretKeys = [][]byte{make([]byte, 16), []byte("0123456789abcdef01234567")}
		}, ""},
		{"no name", func(c *Config) { c.NodeName = "" }, "NodeName is empty"},
		{"bad role", func(c *Config) { c.Role = "worker" }, `Role "worker"`},
		{"host name bind", func(c *Config) { c.BindAddr = "localhost:7711" }, "not an IP address"},
		{"no port", func(c *Config) { c.BindAddr = "10.0.0.1" }, "not IP:port"},
		{"wildcard advertise", func(c *Config) { c.AdvertiseAddr = "0.0.0.0:7711" }, "concrete IP"},
		{"short key", func(c *Config) { c.SecretKeys = [][]byte{make([]byte, 15)} }, "SecretKeys[0] is 15 bytes; a gossip key must be 16, 24 or 32 bytes"},
		{"repeated key", func(c *Config) { c.SecretKeys = [][]byte{make([]byte, 16), make([]byte, 16)} }, "SecretKeys[1] repeats SecretKeys[0]"},
		{"long label", func(c *Config) { c.Label = strings.Repeat("x", 256) }, "Label is 256 bytes; shorten it to at most 255"},
		{"empty label key", func(c *Config) { c.Labels = map[string]string{"": "x"} }, "empty key"},
		{"huge labels", func(c *Config) { c.Labels = map[string]string{"rack": strings.Repeat("r", 500)} }, "shorten Labels"},
		{"negative interval", func(c *Config) { c.ProbeInterval = -1 }, "ProbeInterval -1ns is negative"},
	} {
		cfg := DefaultConfig()
		cfg.NodeName = "host-1"
		tc.edit(cfg)
		err := ValidateConfig(cfg)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}

	// Every problem is reported at once.
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Role, cfg.Label = "", "", strings.Repeat("x", 300)
	err := ValidateConfig(cfg)
	for _, want := range []string{"NodeName", "Role", "Label"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("joined error %v lacks %q", err, want)
		}
	}

	cfg = DefaultConfig()
	cfg.Labels = map[string]string{"rack": strings.Repeat("r", 500)}
	if _, err := New(cfg); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("New with oversized labels: got %v, want ErrMetaTooLarge", err)
	}
}

package main

import (
	"encoding/base64"
	"flag"
	"os"
	"strings"

	"github.com/hearth-gpu/hearth/gossip"
)

// gossipFlags are the gossip pool's flags, the same on both daemons.
type gossipFlags struct {
	bind, advertise, join, keyFile, label *string
}

func addGossipFlags(fs *flag.FlagSet) *gossipFlags {
	return &gossipFlags{
		bind:      fs.String("gossip-addr", "", "join the gossip pool, listening on this IP:port (default port 7711); empty: stay out of it"),
		advertise: fs.String("gossip-advertise", "", "IP:port other members reach this one at (default: the bound address)"),
		join:      fs.String("gossip-join", "", "gossip addresses of members to join, IP:port, comma-separated"),
		keyFile:   fs.String("gossip-key-file", "", "file of base64 gossip encryption keys (16, 24 or 32 bytes), one a line; the first encrypts, all decrypt"),
		label:     fs.String("gossip-label", "hearth", "label every gossip packet carries: pools with different labels never merge"),
	}
}

// config returns the gossip config the flags ask for, or nil when
// --gossip-addr is empty.
func (g *gossipFlags) config() (*gossip.Config, error) {
	if *g.bind == "" {
		return nil, nil
	}
	c := gossip.DefaultConfig()
	c.BindAddr, c.AdvertiseAddr, c.Label = *g.bind, *g.advertise, *g.label
	c.Join = splitList(*g.join)
	if *g.keyFile != "" {
		b, err := os.ReadFile(*g.keyFile)
		if err != nil {
			return nil, usagef("--gossip-key-file: %v", err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, err := base64.StdEncoding.DecodeString(line)
			if err != nil {
				return nil, usagef("--gossip-key-file: %s line %d is not base64 (make a key with: head -c 32 /dev/urandom | base64)", *g.keyFile, i+1)
			}
			c.SecretKeys = append(c.SecretKeys, k)
		}
		if len(c.SecretKeys) == 0 {
			return nil, usagef("--gossip-key-file: %s holds no key", *g.keyFile)
		}
	}
	return c, nil
}

// labelFlags are a host's place in the network, which peer fetches and the
// scheduler prefer to stay within.
func addLabelFlags(fs *flag.FlagSet) func() map[string]string {
	zone := fs.String("zone", "", "this host's zone label: peers in the same zone are preferred")
	rack := fs.String("rack", "", "this host's rack label: peers in the same rack are preferred first")
	return func() map[string]string {
		out := map[string]string{}
		if *zone != "" {
			out["zone"] = *zone
		}
		if *rack != "" {
			out["rack"] = *rack
		}
		if len(out) == 0 {
			return nil
		}
		return out
	}
}

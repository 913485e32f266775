package gossip

import (
	"fmt"

	"github.com/hashicorp/memberlist"
)

// InstallKey adds key to this member's keyring, to decrypt with; UseKey
// then makes it the one that encrypts. The keyring is this member's own:
// rotate by installing the new key everywhere, then using it everywhere,
// then removing the old one everywhere.
func (p *Pool) InstallKey(key []byte) error {
	return p.withKeyring("install", func(kr *memberlist.Keyring) error { return kr.AddKey(key) })
}

// UseKey makes an installed key the one outgoing messages are encrypted with.
func (p *Pool) UseKey(key []byte) error {
	return p.withKeyring("use", func(kr *memberlist.Keyring) error { return kr.UseKey(key) })
}

// RemoveKey drops a key that is no longer in use; the primary key cannot be
// removed.
func (p *Pool) RemoveKey(key []byte) error {
	return p.withKeyring("remove", func(kr *memberlist.Keyring) error { return kr.RemoveKey(key) })
}

func (p *Pool) withKeyring(op string, f func(*memberlist.Keyring) error) error {
	if p.keyring == nil {
		return fmt.Errorf("gossip: %s key: encryption is off; it can only be turned on at start, with SecretKeys", op)
	}
	if err := f(p.keyring); err != nil {
		return fmt.Errorf("gossip: %s key: %w", op, err)
	}
	p.log.Info("gossip keyring changed", "op", op, "keys", len(p.keyring.GetKeys()))
	return nil
}

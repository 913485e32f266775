package webhook

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// maxURLLength bounds a webhook URL: it is stored with every job.
const maxURLLength = 2048

// ValidateURL accepts an absolute http or https URL to a host, without
// user info or a fragment. If allowHosts is not empty the host must be one
// of them, compared without case; an entry "*.example.com" allows any
// subdomain of example.com but not example.com itself. Errors are
// sentences for the user who submitted the URL, and never quote it, since
// a URL can carry a token.
func ValidateURL(raw string, allowHosts []string) error {
	if raw == "" {
		return errors.New("webhook URL is empty; give an absolute http or https URL")
	}
	if len(raw) > maxURLLength {
		return fmt.Errorf("webhook URL is %d bytes long; the limit is %d", len(raw), maxURLLength)
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL it quotes
		}
		return fmt.Errorf("webhook URL does not parse (%v); give an absolute http or https URL", err)
	}
	switch {
	case u.Scheme == "":
		return errors.New("webhook URL is not absolute; give a full URL such as https://hooks.example.com/hearth")
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("webhook URL scheme %q is not allowed; use http or https", u.Scheme)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Errorf("webhook URL has no host; write it as %s://host/path", u.Scheme)
	case u.User != nil:
		return errors.New("webhook URL must not carry a user name or password; receivers check the webhook-signature header instead")
	case strings.Contains(raw, "#"):
		return errors.New("webhook URL must not have a #fragment; it is never sent to the receiver")
	}
	if len(allowHosts) == 0 {
		return nil
	}
	host := normalizeHost(u.Hostname())
	for _, a := range allowHosts {
		a = normalizeHost(a)
		if suffix, ok := strings.CutPrefix(a, "*."); ok {
			if len(host) > len(suffix)+1 && strings.HasSuffix(host, "."+suffix) {
				return nil
			}
		} else if a != "" && host == a {
			return nil
		}
	}
	return fmt.Errorf("webhook host %q is not allowed by this coordinator; use a host matching one of: %s", host, strings.Join(allowHosts, ", "))
}

// normalizeHost makes "Hooks.Example.COM." and "[::1]" compare equal to
// "hooks.example.com" and "::1".
func normalizeHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimSuffix(h, ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	return h
}

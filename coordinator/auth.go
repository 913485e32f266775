package coordinator

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/valyala/fasthttp"
)

// Scope is what a token may do. admin covers every other scope.
type Scope string

const (
	ScopeSubmit Scope = "submit" // submit, cancel and retry jobs
	ScopeRead   Scope = "read"   // read jobs, events, hosts, models, the cluster
	ScopeAdmin  Scope = "admin"  // the catalog, drains, Raft membership, and everything else
	ScopeAgent  Scope = "agent"  // the agent routes: register, heartbeat, assignments, report
	scopeNone   Scope = ""       // open routes
)

var knownScopes = []Scope{ScopeSubmit, ScopeRead, ScopeAdmin, ScopeAgent}

// Token is one bearer token from the config.
type Token struct {
	// Name identifies the token in logs; the secret never is logged.
	Name   string
	Secret string
	Scopes []Scope
}

func (t Token) validate() error {
	if len(t.Secret) < 16 {
		return fmt.Errorf("token %q: secret must be at least 16 characters", t.Name)
	}
	if len(t.Scopes) == 0 {
		return fmt.Errorf("token %q: needs at least one scope (%v)", t.Name, knownScopes)
	}
	for _, s := range t.Scopes {
		if !slices.Contains(knownScopes, s) {
			return fmt.Errorf("token %q: unknown scope %q (known: %v)", t.Name, s, knownScopes)
		}
	}
	return nil
}

// ParseToken parses "name:scope,scope:secret", the form tokens take in
// flags and token files.
func ParseToken(s string) (Token, error) {
	name, rest, ok1 := strings.Cut(strings.TrimSpace(s), ":")
	scopes, secret, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || name == "" {
		return Token{}, errors.New("token must look like name:scope[,scope]:secret")
	}
	t := Token{Name: name, Secret: secret}
	for _, sc := range strings.Split(scopes, ",") {
		t.Scopes = append(t.Scopes, Scope(strings.TrimSpace(sc)))
	}
	return t, t.validate()
}

// authenticator checks bearer tokens. Secrets are compared as SHA-256
// digests in constant time, so neither the lookup nor the comparison
// leaks how much of a guess was right.
type authenticator struct {
	tokens []hashedToken
}

type hashedToken struct {
	name   string
	sum    [32]byte
	scopes []Scope
}

func newAuthenticator(tokens []Token) *authenticator {
	a := &authenticator{}
	for _, t := range tokens {
		a.tokens = append(a.tokens, hashedToken{name: t.Name, sum: sha256.Sum256([]byte(t.Secret)), scopes: t.Scopes})
	}
	return a
}

func (a *authenticator) enabled() bool { return len(a.tokens) > 0 }

// check returns nil when the request may use a route that needs scope.
func (a *authenticator) check(ctx *fasthttp.RequestCtx, scope Scope) error {
	if !a.enabled() || scope == scopeNone {
		return nil
	}
	h := ctx.Request.Header.Peek("Authorization")
	secret, ok := strings.CutPrefix(string(h), "Bearer ")
	if len(h) == 0 || !ok || secret == "" {
		return &apiError{Status: http.StatusUnauthorized, Code: "unauthorized",
			Message: "this coordinator requires a bearer token: send Authorization: Bearer <token>"}
	}
	sum := sha256.Sum256([]byte(secret))
	var match *hashedToken
	for i := range a.tokens {
		if subtle.ConstantTimeCompare(sum[:], a.tokens[i].sum[:]) == 1 {
			match = &a.tokens[i]
		}
	}
	if match == nil {
		return &apiError{Status: http.StatusUnauthorized, Code: "unauthorized", Message: "the bearer token is not one this coordinator knows"}
	}
	if !slices.Contains(match.scopes, scope) && !slices.Contains(match.scopes, ScopeAdmin) {
		return &apiError{Status: http.StatusForbidden, Code: "forbidden",
			Message: fmt.Sprintf("token %q lacks the %q scope that %s %s needs", match.name, scope, ctx.Method(), ctx.Path())}
	}
	return nil
}

// Package pkgdoc holds only a test: every package in the module must start
// with a package comment that says what it is for.
package pkgdoc

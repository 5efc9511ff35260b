// Package testenv starts loopback-only registries, nginx and test
// certificates for the end-to-end tests and the demo.
//
// Every server it starts listens on 127.0.0.1 and is stopped through its
// process id or its Close method. Nothing in this package contacts another
// address.
package testenv

package routing

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// idleTimeoutConn is a connection that fails a read or write once no byte has been sent
// or received for timeout. Every read and write moves the deadline of both directions,
// so a response that takes long after a long upload is still waited for, and a pooled
// connection that stays unused is closed when the deadline passes.
type idleTimeoutConn struct {
	net.Conn
	timeout time.Duration
}

func newIdleTimeoutConn(conn net.Conn, timeout time.Duration) net.Conn {
	return &idleTimeoutConn{Conn: conn, timeout: timeout}
}

func (c *idleTimeoutConn) Read(b []byte) (int, error) {
	_ = c.Conn.SetDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Read(b)
	return n, c.explain(err)
}

func (c *idleTimeoutConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(b)
	return n, c.explain(err)
}

// bodyCopyBufferSize is the chunk in which ReadFrom sends a request body: a blob upload
// to a plain HTTP registry or proxy. net/http's own is 32 KiB.
const bodyCopyBufferSize = 128 << 10

var bodyCopyBuffers = sync.Pool{New: func() any { return new([bodyCopyBufferSize]byte) }}

// ReadFrom sends what r returns until EOF. net/http sends a request body through it, so
// each read from a registry's response and each write to the connection moves up to
// bodyCopyBufferSize bytes, with fewer system calls than net/http's 32 KiB copy.
func (c *idleTimeoutConn) ReadFrom(r io.Reader) (int64, error) {
	buf := bodyCopyBuffers.Get().(*[bodyCopyBufferSize]byte)
	defer bodyCopyBuffers.Put(buf)
	return io.CopyBuffer(writerOnly{c}, r, buf[:])
}

// writerOnly hides every method but Write, so io.CopyBuffer uses the buffer it is given
// rather than calling ReadFrom again.
type writerOnly struct{ io.Writer }

// explain turns a passed deadline into an IdleTimeoutError.
func (c *idleTimeoutConn) explain(err error) error {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return &IdleTimeoutError{Idle: c.timeout, Remote: c.RemoteAddr().String(), Err: err}
	}
	return err
}

// IdleTimeoutError reports a connection that sent and received nothing for Idle. It is a
// net.Error whose Timeout method returns true.
type IdleTimeoutError struct {
	Idle   time.Duration
	Remote string // address of the peer, a proxy or a registry
	Err    error
}

func (e *IdleTimeoutError) Error() string {
	return fmt.Sprintf("connection to %s sent and received nothing for %s, so imgxfer closed it; if the registry needs longer to answer, raise %s",
		e.Remote, e.Idle, EnvIdleTimeout)
}

func (e *IdleTimeoutError) Unwrap() error { return e.Err }

// Timeout reports true, as for every deadline error.
func (e *IdleTimeoutError) Timeout() bool { return true }

// Temporary reports true: a new connection may work.
func (e *IdleTimeoutError) Temporary() bool { return true }

// EnvIdleTimeout is the environment variable that sets the idle timeout of connections,
// as a Go duration such as 90s or 15m.
const EnvIdleTimeout = "IMGXFER_IDLE_TIMEOUT"

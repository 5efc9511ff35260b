package routing

// ProxySettings configures the proxy side: what `imgxfer proxy nginx` generates. Clients
// ignore it.
type ProxySettings struct{}

// validate checks the proxy settings against the rest of the rules.
func (p *ProxySettings) validate(_ *Rules) error {
	return nil
}

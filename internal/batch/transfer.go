package batch

import (
	"fmt"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"

	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/routing"
)

// transferParam is one object of the in-house transfer tool's JSON. Annotations are
// imgxfer's addition, the counterpart of that tool's Transfer(param, annos...).
type transferParam struct {
	Src         transferImage     `yaml:"src"`
	Dest        transferImage     `yaml:"dest"`
	ProxyDomain string            `yaml:"proxy_domain"`
	Annotations map[string]string `yaml:"annotations"`
}

type transferImage struct {
	Image string `yaml:"image"`
}

// parseTransfer reads a list of transfer objects, or one object alone.
func parseTransfer(name string, data []byte) (*Batch, error) {
	body, err := topNode(name, data)
	if err != nil {
		return nil, err
	}
	var params []transferParam
	pathOf := func(i int) string { return fmt.Sprintf("$[%d]", i) }
	if _, isList := body.(*ast.SequenceNode); isList {
		err = yaml.UnmarshalWithOptions(data, &params, yaml.DisallowUnknownField())
	} else {
		var one transferParam
		err = yaml.UnmarshalWithOptions(data, &one, yaml.DisallowUnknownField())
		params = []transferParam{one}
		pathOf = func(int) string { return "$" }
	}
	if err != nil {
		return nil, decodeError(name, err)
	}

	loc := locator{name: name, data: data}
	b := &Batch{}
	for i, param := range params {
		path := pathOf(i)
		if param.Src.Image == "" {
			return nil, loc.errorf(path, "src.image is missing; give the image to copy")
		}
		if param.Dest.Image == "" {
			return nil, loc.errorf(path, "dest.image is missing; give the destination image")
		}
		src, err := parseImage(param.Src.Image)
		if err != nil {
			return nil, loc.errorf(path+".src.image", "%v", err)
		}
		dst, err := parseImage(param.Dest.Image)
		if err != nil {
			return nil, loc.errorf(path+".dest.image", "%v", err)
		}
		if err := registry.CheckAnnotations(param.Annotations); err != nil {
			return nil, loc.errorf(path+".annotations", "%v", err)
		}
		proxy := normalizeProxy(param.ProxyDomain)
		if proxy != "" {
			if _, err := routing.Empty().WithProxy(dst.ref.Registry, proxy); err != nil {
				return nil, loc.errorf(path+".proxy_domain", "invalid proxy %q: give host:port, such as mesh-proxy.example.com:31080, or a URL such as https://mesh-proxy.example.com:31443", param.ProxyDomain)
			}
		}

		entry := Entry{Proxy: proxy}
		entry.Origin = loc.origin(path)
		entry.Source = src.ref.CommonName()
		entry.Destination = destinationFor(src, dst)
		entry.Annotations = param.Annotations
		b.Entries = append(b.Entries, entry)
	}
	return b, nil
}

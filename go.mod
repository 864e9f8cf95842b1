module github.com/hybrid-server/hybrid

go 1.26.8

require (
	github.com/panjf2000/ants/v2 v2.12.1
	github.com/valyala/fasthttp v1.74.0
	golang.org/x/sys v0.49.0
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/molecule-man/go-brrr v1.0.1 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	golang.org/x/sync v0.11.0 // indirect
)

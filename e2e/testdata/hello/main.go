// Command hello is the program inside the end-to-end test images: a static
// binary that proves a pulled image really runs. With "file PATH
// OFFSET..." it describes a file of the image instead: its size, how many
// of its bytes are not zero, and the bytes at the offsets given.
package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "file" {
		describe(os.Args[2], os.Args[3:])
		return
	}
	fmt.Println("hello from regnorm e2e")
}

func describe(path string, offsets []string) {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	nonzero := 0
	for _, c := range b {
		if c != 0 {
			nonzero++
		}
	}
	fmt.Printf("%s: %d bytes, %d not zero", path, len(b), nonzero)
	for _, o := range offsets {
		if n, err := strconv.Atoi(o); err == nil && n >= 0 && n < len(b) {
			fmt.Printf(", %d: %q", n, b[n])
		}
	}
	fmt.Println()
}

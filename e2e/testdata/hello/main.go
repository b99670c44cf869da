// Command hello is the program inside the end-to-end test images: a static
// binary that proves a pulled image really runs.
package main

import "fmt"

func main() {
	fmt.Println("hello from regnorm e2e")
}

#include <ihn/ihn.hpp>
#include <iostream>
int main() { std::cout << ihn::version_string << "\n"; }

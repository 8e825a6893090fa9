// Built against the installed package only; fails to compile or run if the install is broken.
#include <ihn/augmenter.hpp>
#include <ihn/ihn.hpp>

#include <iostream>

int main() {
  std::cout << "ihn " << ihn::version_string << " found through find_package\n";
  return 0;
}

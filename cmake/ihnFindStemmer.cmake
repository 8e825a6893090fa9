# libstemmer, the Snowball stemmers (Debian: libstemmer-dev), as the imported target
# Snowball::stemmer: ihn::eval's METEOR stems with Snowball's English stemmer, as METEOR 1.5
# does. Debian ships no CMake or pkg-config file for it, hence this search. Used by the build and
# by the installed ihnConfig.cmake; leaves Snowball::stemmer undefined when it is not found.
if(NOT TARGET Snowball::stemmer)
  find_path(IHN_STEMMER_INCLUDE_DIR libstemmer.h)
  find_library(IHN_STEMMER_LIBRARY stemmer)
  if(IHN_STEMMER_INCLUDE_DIR AND IHN_STEMMER_LIBRARY)
    add_library(Snowball::stemmer UNKNOWN IMPORTED)
    set_target_properties(Snowball::stemmer PROPERTIES
      IMPORTED_LOCATION "${IHN_STEMMER_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${IHN_STEMMER_INCLUDE_DIR}")
  endif()
endif()

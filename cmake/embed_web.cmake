# Turn every file of the web folder into one C source of byte arrays, so the
# chatd binary serves its pages with nothing installed beside it.
# Run by the build (see CMakeLists.txt): cmake -DDIR=web -DOUT=file.c -P this
file(GLOB files LIST_DIRECTORIES false RELATIVE "${DIR}" "${DIR}/*")
list(SORT files)
set(arrays "")
set(table "")
set(i 0)
foreach(name ${files})
  if(name MATCHES "^\\.")
    continue()
  endif()
  # Served as {prefix}/assets/NAME and written into a C string below.
  if(NOT name MATCHES "^[A-Za-z0-9][A-Za-z0-9._-]*$")
    message(FATAL_ERROR "web/${name}: asset names may hold only letters, digits, '.', '_' and '-'")
  endif()
  file(READ "${DIR}/${name}" hex HEX)
  file(SHA256 "${DIR}/${name}" sum)
  string(SUBSTRING "${sum}" 0 20 etag)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n    " bytes "${bytes}")
  string(APPEND arrays "static const unsigned char asset${i}[] = {\n    ${bytes}0};\n")
  string(APPEND table "    {\"${name}\", asset${i}, ${len}, \"\\\"${etag}\\\"\"},\n")
  math(EXPR i "${i} + 1")
endforeach()
file(WRITE "${OUT}"
  "/* Generated from web/ by cmake/embed_web.cmake at build time: do not edit. */\n"
  "#include \"hub/web.h\"\n\n"
  "${arrays}\n"
  "const struct web_asset web_assets[] = {\n${table}    {0, 0, 0, 0},\n};\n")

/* corpus: the English text make-model learns its BPE merges from. Plain prose about computers
 * and the weather, written for this project; about 4 KB, enough for a few hundred merges that
 * capture common words, word starts and endings. */
#ifndef ORP_CORPUS_H
#define ORP_CORPUS_H

static const char mm_corpus[] =
    "The quick brown fox jumps over the lazy dog. The dog does not mind; it is a lazy dog, and "
    "lazy dogs like to sleep in the sun. When the sun goes down, the dog goes inside the house "
    "and sleeps by the fire.\n\n"
    "A computer is a machine that follows instructions. The instructions are written in a "
    "program, and the program is stored in memory. When the computer runs the program, it reads "
    "each instruction, does what the instruction says, and then moves on to the next one. "
    "Modern computers can do this billions of times per second.\n\n"
    "There are many kinds of computers. Some are small enough to fit in your pocket, and some "
    "fill a whole room. The ones in a data center are called servers: they answer requests "
    "from other computers over the network. A server that runs a language model reads your "
    "question, thinks for a moment, and then writes an answer one word at a time.\n\n"
    "What is a language model? It is a program that has read a great deal of text and has "
    "learned which words tend to follow which. Given the start of a sentence, it predicts the "
    "next word, then the word after that, and so on. It doesn't really understand the world, "
    "but it's surprisingly good at writing sentences that sound right.\n\n"
    "The weather today is cold and clear. In the morning there was frost on the grass, and the "
    "windows were white with ice. By noon the sun had melted the frost, and the children went "
    "outside to play. They're hoping it will snow tomorrow; the forecast says there is a "
    "chance of snow in the evening, with temperatures falling to minus 5 degrees.\n\n"
    "I'll tell you a story. Once upon a time there was a little town by the sea. The people "
    "of the town were fishermen, and every morning they went out in their boats to catch "
    "fish. One day a great storm came, and the boats could not go out. The people waited and "
    "waited, and after three days the storm was over. The sea was calm again, and the boats "
    "went out, and they caught more fish than ever before.\n\n"
    "We've learned that good software is simple. It does one thing, and it does that thing "
    "well. When it fails, it tells you why, in words you can understand. It doesn't hide its "
    "errors, and it doesn't guess what you meant. Good programs are tested: every function "
    "has a test, and every test runs every time the code changes.\n\n"
    "Numbers matter too: 1, 2, 3, 10, 42, 100, 256, 1024 and 2025 are all numbers. A byte "
    "has 8 bits and can hold 256 values. A kilobyte is 1024 bytes, and a megabyte is 1024 "
    "kilobytes. The price was $19.99, or about 20 dollars; the meeting is at 10:30.\n\n"
    "She said, \"Hello! How are you?\" He answered, \"I'm fine, thank you. And you?\" They "
    "talked for an hour about their work, their families and their plans for the summer. "
    "She wants to travel to the mountains; he would rather stay at home and read.\n\n"
    "In the café on the corner, the coffee is strong and the bread is fresh. The owner, a "
    "friendly man named José, opens the doors at six every morning. People come in, order "
    "their coffee, read the news, and talk about the weather, the prices and the world.\n\n"
    "The river runs through the middle of the city. On warm days people sit on its banks, "
    "eat their lunch and watch the boats go by. In winter the river sometimes freezes, and "
    "then the children skate on the ice while their parents watch from the bridge.\n\n"
    "Learning takes time. You read, you practice, you make mistakes, and you learn from them. "
    "Nobody is good at something the first time they try it. The important thing is to keep "
    "trying, to ask questions, and to help others who are learning too.\n";

#endif
